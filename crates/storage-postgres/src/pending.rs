//! Writes a transaction holds back and sends later as one multi-row statement per table.
//!
//! The engine writes a snapshot, the run row and its lease timer at every transition, and a
//! batch of commands makes hundreds of transitions: one statement each is most of what the
//! database does per run. [`Pending`] keeps the writes nobody reads back at once — snapshot
//! inserts, updates of runs without an idempotency key, timer changes, outputs and slots
//! given back — and [`crate::tx::PostgresTx`] sends each table's share as one statement
//! (`unnest` of arrays) before anything reads that table, before a savepoint and at commit
//! (slots given back: before anything reads or takes slots). Within a table the held writes
//! touch distinct rows (a later write of the same row replaces the earlier one), so their
//! order does not matter; across tables nothing the engine does depends on it.

use std::collections::HashMap;

use trigger_engine::model::{Batch, Packet, ReadyEntry, Run, Timer};

use crate::store::Param;

/// A held-back write of one table, ready to send.
pub(crate) struct Flush {
    pub sql: &'static str,
    pub params: Vec<Param>,
    /// `(n, error)`: the statement must change at least `n` rows.
    pub must_change: Option<(u64, String)>,
}

/// The columns an update of a run writes (those fixed at insert are left alone).
struct RunRow {
    status: &'static str,
    worker_id: Option<String>,
    lock_to_version: Option<String>,
    machine: Option<&'static str>,
    idempotency_key: Option<String>,
    /// As a JSON array, turned back into `text[]` by the statement.
    tags: String,
    body: String,
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct Pending {
    snapshots: Vec<(String, String, String)>,
    runs: HashMap<String, RunRow>,
    timers: HashMap<String, Option<Timer>>,
    outputs: HashMap<String, Packet>,
    /// Runs whose slots are given back.
    releases: Vec<String>,
    /// New runs without an idempotency key, with their payloads.
    inserts: Vec<(Run, Packet, String)>,
    /// Ready entries of runs never queued before ([`trigger_engine::storage::Tx::enqueue_first`]).
    entries: Vec<(ReadyEntry, String)>,
    /// Updates of batches without an idempotency key: the latest body of each.
    batches: HashMap<String, (String, String)>,
    /// Batch items recorded: `(batch, index, run)`.
    batch_items: Vec<(String, i32, String)>,
}

impl Pending {
    pub fn snapshot(&mut self, id: &str, run_id: &str, body: String) {
        self.snapshots.push((id.to_string(), run_id.to_string(), body));
    }

    /// A run's new state; `body` is its encoding.
    pub fn run(&mut self, run: &Run, body: String) -> serde_json::Result<()> {
        let row = RunRow {
            status: run.status.as_str(),
            worker_id: run.worker_id.clone(),
            lock_to_version: run.lock_to_version.clone(),
            machine: run.machine.map(|m| m.name()),
            idempotency_key: run.idempotency_key.clone(),
            tags: serde_json::to_string(&run.tags)?,
            body,
        };
        self.runs.insert(run.id.clone(), row);
        Ok(())
    }

    /// A timer set (`Some`) or cleared (`None`).
    pub fn timer(&mut self, key: &str, timer: Option<Timer>) {
        self.timers.insert(key.to_string(), timer);
    }

    pub fn output(&mut self, run_id: &str, output: &Packet) {
        self.outputs.insert(run_id.to_string(), output.clone());
    }

    /// A new run without an idempotency key (nothing can collide with it); `body` is its
    /// encoding.
    pub fn insert_run(&mut self, run: &Run, payload: &Packet, body: String) {
        self.inserts.push((run.clone(), payload.clone(), body));
    }

    /// The ready entry of a run never queued before.
    pub fn entry(&mut self, entry: &ReadyEntry, body: String) {
        self.entries.push((entry.clone(), body));
    }

    /// A batch's new state (one without an idempotency key); `body` is its encoding.
    pub fn batch(&mut self, batch: &Batch, body: String) {
        self.batches.insert(batch.id.clone(), (batch.env_id.clone(), body));
    }

    pub fn batch_item(&mut self, batch_id: &str, index: i32, run_id: &str) {
        self.batch_items.push((batch_id.to_string(), index, run_id.to_string()));
    }

    /// A run's slot given back (nobody needs to know at once whether it held one).
    pub fn release(&mut self, run_id: &str) {
        self.releases.push(run_id.to_string());
    }

    /// The output held for a run, if one is.
    pub fn output_of(&self, run_id: &str) -> Option<&Packet> {
        self.outputs.get(run_id)
    }

    /// Forgets everything held (rolled back).
    pub fn clear(&mut self) {
        *self = Pending::default();
    }

    pub fn take_snapshots(&mut self) -> Option<Flush> {
        if self.snapshots.is_empty() {
            return None;
        }
        let (mut ids, mut runs, mut bodies) = (Vec::new(), Vec::new(), Vec::new());
        for (id, run_id, body) in std::mem::take(&mut self.snapshots) {
            ids.push(id);
            runs.push(run_id);
            bodies.push(body);
        }
        Some(Flush {
            sql: "INSERT INTO snapshots (id, run_id, body)
                  SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
            params: vec![Box::new(ids), Box::new(runs), Box::new(bodies)],
            must_change: None,
        })
    }

    /// The new runs and their payloads, in one statement.
    pub fn take_inserts(&mut self) -> Option<Flush> {
        if self.inserts.is_empty() {
            return None;
        }
        let rows = std::mem::take(&mut self.inserts);
        let n = rows.len() as u64;
        // Text columns in the order of the statement's `unnest`, then the two others.
        let mut text: [Vec<Option<String>>; 14] = Default::default();
        let (mut is_test, mut created_at) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
        for (run, payload, body) in rows {
            let tags = serde_json::to_string(&run.tags).unwrap_or_else(|_| "[]".into());
            is_test.push(run.is_test);
            created_at.push(run.created_at);
            let values = [
                Some(run.id),
                Some(run.env_id),
                Some(run.task),
                Some(run.status.as_str().to_string()),
                Some(run.queue),
                run.batch_id,
                run.parent_run_id,
                run.worker_id,
                run.lock_to_version,
                run.machine.map(|m| m.name().to_string()),
                Some(tags),
                Some(body),
                payload.data,
                Some(payload.data_type),
            ];
            for (column, value) in text.iter_mut().zip(values) {
                column.push(value);
            }
        }
        let mut params: Vec<Param> = text.into_iter().map(|c| Box::new(c) as Param).collect();
        params.push(Box::new(is_test));
        params.push(Box::new(created_at));
        Some(Flush {
            sql: "WITH u AS (
                      SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                           $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                                           $11::text[], $12::text[], $13::text[], $14::text[],
                                           $15::boolean[], $16::bigint[])
                          AS u(id, env_id, task, status, queue, batch_id, parent_run_id, worker_id,
                               lock_version, machine, tags, body, payload, payload_type, is_test,
                               created_at)),
                  d AS (INSERT INTO run_data (run_id, payload, payload_type)
                        SELECT id, payload, payload_type FROM u
                        ON CONFLICT (run_id) DO UPDATE SET
                            payload = excluded.payload, payload_type = excluded.payload_type)
                  INSERT INTO runs (id, env_id, task, status, queue, batch_id, parent_run_id, version,
                                    is_test, machine, created_at, idempotency_key, tags, body)
                  SELECT u.id, u.env_id, u.task, u.status, u.queue, u.batch_id, u.parent_run_id,
                         coalesce((SELECT w.version FROM workers w WHERE w.id = u.worker_id), u.lock_version),
                         u.is_test, u.machine, u.created_at, NULL,
                         ARRAY(SELECT json_array_elements_text(u.tags::json)), u.body
                  FROM u",
            params,
            must_change: Some((n, format!("{n} runs were inserted but not all of them were written"))),
        })
    }

    /// The ready entries of runs never queued before, counted in their subqueues, in one
    /// statement. A run queued twice fails it (the entry's key is unique).
    pub fn take_entries(&mut self) -> Option<Flush> {
        if self.entries.is_empty() {
            return None;
        }
        let rows = std::mem::take(&mut self.entries);
        let n = rows.len() as u64;
        let (mut ids, mut envs, mut queues, mut keys, mut scores, mut bodies, mut resumes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (e, body) in rows {
            ids.push(e.run_id);
            envs.push(e.env_id);
            queues.push(e.queue);
            keys.push(e.concurrency_key);
            scores.push(e.score);
            bodies.push(body);
            resumes.push(e.resume);
        }
        Some(Flush {
            sql: "WITH u AS (
                      SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                                           $6::text[], $7::boolean[])
                          AS u(run_id, env_id, queue, ck, score, body, resume)),
                  s AS (INSERT INTO subqueues (env_id, queue, ck, ready_count, running, lim, paused)
                        SELECT u.env_id, u.queue, u.ck, count(*)::integer, 0,
                               (SELECT lim FROM queues WHERE env_id = u.env_id AND name = u.queue),
                               coalesce((SELECT paused FROM queues WHERE env_id = u.env_id AND name = u.queue),
                                        false)
                        FROM u GROUP BY u.env_id, u.queue, u.ck
                        ON CONFLICT (env_id, queue, ck) DO UPDATE
                            SET ready_count = subqueues.ready_count + excluded.ready_count)
                  INSERT INTO ready (run_id, env_id, queue, ck, score, body, resume)
                  SELECT run_id, env_id, queue, ck, score, body, resume FROM u",
            params: vec![
                Box::new(ids),
                Box::new(envs),
                Box::new(queues),
                Box::new(keys),
                Box::new(scores),
                Box::new(bodies),
                Box::new(resumes),
            ],
            must_change: Some((n, format!("{n} runs were queued but not all of them were written"))),
        })
    }

    pub fn take_batches(&mut self) -> Option<Flush> {
        if self.batches.is_empty() {
            return None;
        }
        let rows = std::mem::take(&mut self.batches);
        let n = rows.len() as u64;
        let (mut ids, mut envs, mut bodies) = (Vec::new(), Vec::new(), Vec::new());
        for (id, (env_id, body)) in rows {
            ids.push(id);
            envs.push(env_id);
            bodies.push(body);
        }
        Some(Flush {
            sql: "UPDATE batches b SET env_id = u.env_id, idempotency_key = NULL, body = u.body
                  FROM unnest($1::text[], $2::text[], $3::text[]) AS u(id, env_id, body)
                  WHERE b.id = u.id",
            params: vec![Box::new(ids), Box::new(envs), Box::new(bodies)],
            must_change: Some((n, format!("{n} batches were updated but not all of them exist"))),
        })
    }

    pub fn take_batch_items(&mut self) -> Option<Flush> {
        if self.batch_items.is_empty() {
            return None;
        }
        let (mut batches, mut indexes, mut runs) = (Vec::new(), Vec::new(), Vec::new());
        for (batch, index, run) in std::mem::take(&mut self.batch_items) {
            batches.push(batch);
            indexes.push(index);
            runs.push(run);
        }
        Some(Flush {
            sql: "INSERT INTO batch_items (batch_id, idx, run_id)
                  SELECT * FROM unnest($1::text[], $2::integer[], $3::text[]) ON CONFLICT DO NOTHING",
            params: vec![Box::new(batches), Box::new(indexes), Box::new(runs)],
            must_change: None,
        })
    }

    pub fn take_runs(&mut self) -> Option<Flush> {
        if self.runs.is_empty() {
            return None;
        }
        let rows = std::mem::take(&mut self.runs);
        let n = rows.len() as u64;
        let mut columns: [Vec<Option<String>>; 8] = Default::default();
        for (id, row) in rows {
            let values = [
                Some(id),
                Some(row.status.to_string()),
                row.worker_id,
                row.lock_to_version,
                row.machine.map(str::to_string),
                row.idempotency_key,
                Some(row.tags),
                Some(row.body),
            ];
            for (column, value) in columns.iter_mut().zip(values) {
                column.push(value);
            }
        }
        Some(Flush {
            sql: "UPDATE runs r SET status = u.status,
                      version = coalesce((SELECT w.version FROM workers w WHERE w.id = u.worker_id),
                                         u.lock_version),
                      machine = u.machine, idempotency_key = u.ikey,
                      tags = ARRAY(SELECT json_array_elements_text(u.tags::json)), body = u.body
                  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                              $7::text[], $8::text[])
                       AS u(id, status, worker_id, lock_version, machine, ikey, tags, body)
                  WHERE r.id = u.id",
            params: columns.into_iter().map(|c| Box::new(c) as Param).collect(),
            must_change: Some((n, format!("{n} runs were updated but not all of them exist"))),
        })
    }

    /// At most two statements: the timers set, then the timers cleared.
    pub fn take_timers(&mut self) -> Vec<Flush> {
        let mut flushes = Vec::new();
        if self.timers.is_empty() {
            return flushes;
        }
        let (mut keys, mut kinds, mut targets, mut fences, mut fire_at, mut cleared) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (key, timer) in std::mem::take(&mut self.timers) {
            match timer {
                Some(t) => {
                    keys.push(key);
                    kinds.push(t.kind.as_str().to_string());
                    targets.push(t.target);
                    fences.push(t.fence);
                    fire_at.push(t.fire_at);
                }
                None => cleared.push(key),
            }
        }
        if !keys.is_empty() {
            flushes.push(Flush {
                sql: "INSERT INTO timers (key, kind, target, fence, fire_at)
                      SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
                      ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, target = excluded.target,
                          fence = excluded.fence, fire_at = excluded.fire_at",
                params: vec![
                    Box::new(keys),
                    Box::new(kinds),
                    Box::new(targets),
                    Box::new(fences),
                    Box::new(fire_at),
                ],
                must_change: None,
            });
        }
        if !cleared.is_empty() {
            flushes.push(Flush {
                sql: "DELETE FROM timers WHERE key = ANY($1)",
                params: vec![Box::new(cleared)],
                must_change: None,
            });
        }
        flushes
    }

    /// One statement for every slot given back: the holders go, and each environment's and
    /// subqueue's count drops by its share (the environment rows first, the order in which
    /// the limit checks lock them).
    pub fn take_releases(&mut self) -> Option<Flush> {
        if self.releases.is_empty() {
            return None;
        }
        Some(Flush {
            sql: "WITH h AS (DELETE FROM holders WHERE run_id = ANY($1) RETURNING env_id, queue, ck),
                       c AS (SELECT env_id, queue, ck, count(*)::integer AS n FROM h GROUP BY env_id, queue, ck),
                       e AS (UPDATE env_running r SET running = greatest(r.running - x.n, 0)
                             FROM (SELECT env_id, sum(n)::integer AS n FROM c GROUP BY env_id) x
                             WHERE r.env_id = x.env_id RETURNING 1)
                  UPDATE subqueues q SET running = greatest(q.running - c.n, 0) FROM c
                  WHERE q.env_id = c.env_id AND q.queue = c.queue AND q.ck = c.ck
                    AND (SELECT count(*) FROM e) >= 0",
            params: vec![Box::new(std::mem::take(&mut self.releases))],
            must_change: None,
        })
    }

    pub fn take_outputs(&mut self) -> Option<Flush> {
        if self.outputs.is_empty() {
            return None;
        }
        let (mut ids, mut data, mut types) = (Vec::new(), Vec::new(), Vec::new());
        for (id, packet) in std::mem::take(&mut self.outputs) {
            ids.push(id);
            data.push(packet.data);
            types.push(packet.data_type);
        }
        Some(Flush {
            sql: "INSERT INTO run_data (run_id, output, output_type)
                  SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
                  ON CONFLICT (run_id) DO UPDATE SET output = excluded.output, output_type = excluded.output_type",
            params: vec![Box::new(ids), Box::new(data), Box::new(types)],
            must_change: None,
        })
    }
}
