//! The context every transition runs in: one storage transaction, the time of the batch,
//! the configuration, and the effects to publish once the transaction commits.

use trigger_types::{ids, ExecutionStatus, Millis, RunStatus};

use crate::config::Config;
use crate::error::{not_found, Error, Result};
use crate::model::{CompletedWaitpoint, Run, Snapshot, Timer, TimerKind};
use crate::storage::Tx;

/// Something to tell the world after a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A run became claimable in an environment: wake its dequeuers.
    WorkAvailable { env_id: String },
    /// A run has a new snapshot (or status): tell its worker and the change feed.
    RunChanged(RunChange),
    /// A timer was armed for this time: wake the timer loop if it sleeps past it.
    TimerArmed { at: Millis },
}

/// A run's new state, as published on the change feed.
#[derive(Debug, Clone, PartialEq)]
pub struct RunChange {
    pub run_id: String,
    pub env_id: String,
    pub status: RunStatus,
    pub snapshot_id: String,
    pub execution_status: ExecutionStatus,
    pub worker_instance: Option<String>,
}

/// A transition's view of the world.
pub struct Txn<'a> {
    pub(crate) tx: &'a mut dyn Tx,
    pub(crate) now: Millis,
    pub(crate) config: &'a Config,
    pub(crate) effects: &'a mut Vec<Effect>,
    /// The snapshot this command wrote last, so a transition can answer with it without
    /// reading it back.
    pub(crate) last_snapshot: Option<Snapshot>,
}

impl Txn<'_> {
    /// A new id of a kind, ordered by the engine clock.
    pub(crate) fn id(&self, prefix: &str) -> String {
        ids::generate_at(prefix, self.now.max(0) as u64)
    }

    /// Reads a run for change, or 404.
    pub(crate) fn lock_run(&mut self, id: &str) -> Result<Run> {
        self.tx.lock_run(id)?.ok_or_else(|| not_found("Run", id))
    }

    /// Reads a run in an environment for change; a run of another environment is 404.
    pub(crate) fn lock_run_in(&mut self, env_id: &str, id: &str) -> Result<Run> {
        match self.tx.lock_run(id)? {
            Some(run) if run.env_id == env_id => Ok(run),
            _ => Err(not_found("Run", id)),
        }
    }

    /// Checks that `given` is the run's latest snapshot.
    pub(crate) fn check_snapshot(&self, run: &Run, given: &str) -> Result<()> {
        if run.snapshot_id == given {
            Ok(())
        } else {
            Err(Error::StaleSnapshot {
                given: given.to_string(),
                latest: run.snapshot_id.clone(),
                status: run.execution_status.to_string(),
            })
        }
    }

    /// Appends a snapshot to the run's log and makes it the run's truth. The caller writes
    /// the run afterwards with [`Txn::save_run`].
    pub(crate) fn snapshot(
        &mut self,
        run: &mut Run,
        status: ExecutionStatus,
        description: &str,
        completed_waitpoints: Vec<CompletedWaitpoint>,
    ) -> Result<Snapshot> {
        let snapshot = Snapshot {
            id: self.id(ids::SNAPSHOT),
            run_id: run.id.clone(),
            execution_status: status,
            run_status: run.status,
            description: description.to_string(),
            attempt_number: run.attempt_number,
            worker_instance: run.worker_instance.clone(),
            batch_id: run.batch_id.clone(),
            completed_waitpoints,
            created_at: self.now,
        };
        self.tx.insert_snapshot(&snapshot)?;
        run.snapshot_id = snapshot.id.clone();
        run.execution_status = status;
        self.last_snapshot = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// Writes the run and publishes its change.
    pub(crate) fn save_run(&mut self, run: &mut Run) -> Result<()> {
        run.updated_at = self.now;
        self.tx.update_run(run)?;
        self.changed(run);
        Ok(())
    }

    pub(crate) fn changed(&mut self, run: &Run) {
        self.effects.push(Effect::RunChanged(RunChange {
            run_id: run.id.clone(),
            env_id: run.env_id.clone(),
            status: run.status,
            snapshot_id: run.snapshot_id.clone(),
            execution_status: run.execution_status,
            worker_instance: run.worker_instance.clone(),
        }));
    }

    pub(crate) fn work_available(&mut self, env_id: &str) {
        let effect = Effect::WorkAvailable { env_id: env_id.to_string() };
        if !self.effects.contains(&effect) {
            self.effects.push(effect);
        }
    }

    /// Arms (or moves) a timer.
    pub(crate) fn set_timer(&mut self, kind: TimerKind, target: &str, fence: &str, at: Millis) -> Result<()> {
        let timer = Timer {
            key: timer_key(kind, target),
            kind,
            target: target.to_string(),
            fence: fence.to_string(),
            fire_at: at,
        };
        self.tx.set_timer(&timer)?;
        self.effects.push(Effect::TimerArmed { at });
        Ok(())
    }

    pub(crate) fn clear_timer(&mut self, kind: TimerKind, target: &str) -> Result<()> {
        self.tx.clear_timer(&timer_key(kind, target))?;
        Ok(())
    }

    /// Arms the run's lease for its current snapshot, if that snapshot can stall.
    pub(crate) fn arm_heartbeat(&mut self, run: &Run) -> Result<()> {
        let hb = &self.config.heartbeat;
        let timeout = match run.execution_status {
            ExecutionStatus::PendingExecuting => hb.pending_executing,
            ExecutionStatus::Executing => hb.executing,
            ExecutionStatus::ExecutingWithWaitpoints | ExecutionStatus::QueuedExecuting => {
                hb.executing_with_waitpoints
            }
            ExecutionStatus::PendingCancel => hb.pending_cancel,
            _ => {
                return self.clear_timer(TimerKind::Heartbeat, &run.id);
            }
        };
        let (id, snapshot) = (run.id.clone(), run.snapshot_id.clone());
        self.set_timer(TimerKind::Heartbeat, &id, &snapshot, self.now + timeout)
    }
}

/// The stable key of a timer: one timer of each kind per target.
pub fn timer_key(kind: TimerKind, target: &str) -> String {
    format!("{}:{target}", kind.as_str())
}
