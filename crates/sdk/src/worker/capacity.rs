//! The worker's capacity: run slots plus optional cpu and memory, taken by executing runs
//! and given back while a run waits.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use trigger_engine::MachinePreset;

#[derive(Debug)]
struct State {
    slots: u32,
    cpu: f64,
    memory: f64,
    /// Runs waiting to resume: the dequeue loop lets them go first.
    resuming: u32,
}

/// Free capacity of one worker.
#[derive(Debug)]
pub(crate) struct Capacity {
    state: Mutex<State>,
    changed: Notify,
}

/// Free capacity at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Free {
    pub slots: u32,
    pub cpu: f64,
    pub memory: f64,
}

impl Capacity {
    pub fn new(slots: u32, cpu: f64, memory: f64) -> Arc<Self> {
        Arc::new(Capacity {
            state: Mutex::new(State { slots, cpu, memory, resuming: 0 }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a run could be claimed (a free slot, nobody resuming).
    pub async fn wait_free(&self) -> Free {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.lock();
                if s.slots > 0 && s.resuming == 0 && s.cpu > 0.0 && s.memory > 0.0 {
                    return Free { slots: s.slots, cpu: s.cpu, memory: s.memory };
                }
            }
            notified.await;
        }
    }

    fn take(&self, machine: MachinePreset) {
        let mut s = self.lock();
        s.slots = s.slots.saturating_sub(1);
        s.cpu -= machine.cpu();
        s.memory -= machine.memory();
    }

    fn give(&self, machine: MachinePreset) {
        {
            let mut s = self.lock();
            s.slots += 1;
            s.cpu += machine.cpu();
            s.memory += machine.memory();
        }
        self.changed.notify_waiters();
    }

    async fn take_when_fits(&self, machine: MachinePreset) {
        self.lock().resuming += 1;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                if s.slots > 0 && s.cpu + 1e-9 >= machine.cpu() && s.memory + 1e-9 >= machine.memory() {
                    s.slots -= 1;
                    s.cpu -= machine.cpu();
                    s.memory -= machine.memory();
                    s.resuming -= 1;
                    break;
                }
            }
            notified.await;
        }
        self.changed.notify_waiters();
    }
}

/// The capacity one run holds; given back when dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    capacity: Arc<Capacity>,
    machine: MachinePreset,
    held: Mutex<bool>,
}

impl Lease {
    /// Takes capacity for a run the engine just handed over (the dequeue asked for no more
    /// than was free).
    pub fn take(capacity: &Arc<Capacity>, machine: MachinePreset) -> Arc<Lease> {
        capacity.take(machine);
        Arc::new(Lease { capacity: capacity.clone(), machine, held: Mutex::new(true) })
    }

    /// Gives the capacity back while the run waits.
    pub fn suspend(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if *held {
            *held = false;
            drop(held);
            self.capacity.give(self.machine);
        }
    }

    /// Takes the capacity again after a wait, waiting for room.
    pub async fn resume(&self) {
        if *self.held.lock().unwrap_or_else(|e| e.into_inner()) {
            return;
        }
        self.capacity.take_when_fits(self.machine).await;
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if *self.held.get_mut().unwrap_or_else(|e| e.into_inner()) {
            self.capacity.give(self.machine);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_runs_give_capacity_back_and_resume_first() {
        let cap = Capacity::new(1, f64::INFINITY, f64::INFINITY);
        assert_eq!(cap.wait_free().await.slots, 1);
        let lease = Lease::take(&cap, MachinePreset::Small1x);
        assert!(tokio::time::timeout(std::time::Duration::from_millis(20), cap.wait_free()).await.is_err());
        lease.suspend();
        assert_eq!(cap.wait_free().await.slots, 1);
        let other = Lease::take(&cap, MachinePreset::Small1x);
        let resumed = tokio::spawn({
            let lease = lease.clone();
            async move { lease.resume().await }
        });
        tokio::task::yield_now().await;
        drop(other);
        resumed.await.unwrap();
        assert!(tokio::time::timeout(std::time::Duration::from_millis(20), cap.wait_free()).await.is_err());
        drop(lease);
        assert_eq!(cap.wait_free().await.slots, 1);
    }
}
