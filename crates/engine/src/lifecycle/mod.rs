//! The run lifecycle, one file per group of transitions. Each transition is a function of
//! the stored state and a command, writing through the transaction of a [`crate::txn::Txn`].

pub mod attempt;
pub mod batch;
pub mod cancel;
pub mod dequeue;
pub mod manage;
pub mod metadata;
pub mod queue;
pub mod registry;
pub mod timers;
pub mod trigger;
pub mod wait;
