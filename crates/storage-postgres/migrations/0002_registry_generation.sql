-- trigger.rs PostgreSQL schema, version 2.
--
-- A counter every registry write (environments, worker versions, tasks, queues) increments
-- in its transaction. Each replica keeps the registry rows it read in memory and reads this
-- counter when it begins a writer transaction: a different value means another replica
-- changed the registry since, and the replica forgets what it kept.

CREATE TABLE registry_generation (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    gen        bigint NOT NULL
);
INSERT INTO registry_generation (singleton, gen) VALUES (true, 0);
