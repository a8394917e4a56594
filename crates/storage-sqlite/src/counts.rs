//! Queue counters held back within a transaction.
//!
//! Every enqueue, claim and release changes a subqueue's counts and every slot taken or
//! given back changes its environment's: one statement each, per run, when the engine
//! applies hundreds of commands per transaction on a handful of subqueues. [`HeldCounts`]
//! sums those changes instead, and [`crate::SqliteTx`] writes each subqueue's and each
//! environment's net change as one statement before anything reads the counters, before a
//! savepoint and at commit. The rows they count (ready entries, holders) are written at
//! once, so a subqueue's head is recomputed from its entries when its counts are written.

use std::collections::HashMap;

/// `(env_id, queue, concurrency key)`.
pub(crate) type SubqueueKey = (String, String, String);

/// Net change of `(ready_count, running)`.
pub(crate) type Delta = (i64, i64);

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct HeldCounts {
    /// Net change of `(ready_count, running)` per subqueue; `(0, 0)` when only the head may
    /// have moved.
    subqueues: HashMap<SubqueueKey, Delta>,
    /// Net change of each environment's running count.
    envs: HashMap<String, i64>,
}

impl HeldCounts {
    fn subqueue(&mut self, env_id: &str, queue: &str, ck: &str) -> &mut Delta {
        self.subqueues.entry((env_id.to_string(), queue.to_string(), ck.to_string())).or_default()
    }

    /// `n` ready entries added (or, negative, removed).
    pub fn entries(&mut self, env_id: &str, queue: &str, ck: &str, n: i64) {
        self.subqueue(env_id, queue, ck).0 += n;
    }

    /// `n` slots taken (or, negative, given back) in a subqueue and its environment.
    pub fn slots(&mut self, env_id: &str, queue: &str, ck: &str, n: i64) {
        self.subqueue(env_id, queue, ck).1 += n;
        match self.envs.get_mut(env_id) {
            Some(held) => *held += n,
            None => {
                self.envs.insert(env_id.to_string(), n);
            }
        }
    }

    /// The subqueue's entries changed without changing their number.
    pub fn touch(&mut self, env_id: &str, queue: &str, ck: &str) {
        self.subqueue(env_id, queue, ck);
    }

    /// The subqueues' net changes, emptied.
    pub fn take_subqueues(&mut self) -> Vec<(SubqueueKey, Delta)> {
        self.subqueues.drain().collect()
    }

    /// The environments' net changes other than zero, emptied.
    pub fn take_envs(&mut self) -> Vec<(String, i64)> {
        self.envs.drain().filter(|(_, n)| *n != 0).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.subqueues.is_empty() && self.envs.is_empty()
    }

    /// Forgets everything held (rolled back).
    pub fn clear(&mut self) {
        self.subqueues.clear();
        self.envs.clear();
    }
}
