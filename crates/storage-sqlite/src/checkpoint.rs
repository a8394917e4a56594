//! Checkpointing the WAL off the writer's thread.
//!
//! SQLite's automatic checkpoint runs on the connection that commits, right after the commit:
//! on the engine's one writer thread, where it took about 7 % of the thread's time during a
//! drain (copying WAL frames into the database file and syncing it). A [`Checkpointer`] turns
//! that off for the store's connection and checkpoints from a second connection on a thread
//! of its own, woken by commits.
//!
//! A `PASSIVE` checkpoint from another connection copies what was committed when it began,
//! while the writer goes on appending. The WAL starts over from its beginning only when a
//! write transaction begins with every frame copied, and under unbroken load that moment
//! does not come: the WAL would grow for as long as the load lasts. So when a checkpoint finds
//! the WAL past [`INLINE_FRAMES`], the writer checkpoints after its next commit, as SQLite
//! would have: with no writer alongside, that pass copies the few frames the background one
//! left, and the next write transaction starts the WAL over.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// SQLite's own automatic checkpoint threshold, in WAL frames (pages).
const FRAMES: i64 = 1000;

/// A WAL this long (16 MiB of 4 KiB pages) gets its checkpoint finished by the writer.
const INLINE_FRAMES: i64 = 4096;

/// Least time between two background checkpoints, so a stream of small commits does not
/// become a stream of small checkpoints (each one syncs the database file).
const PAUSE: Duration = Duration::from_millis(20);

/// The background checkpoint thread of one store, and what the writer tells it.
pub(crate) struct Checkpointer {
    /// Wakes the thread; dropping it stops the thread.
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Set by the thread when the WAL grew past [`INLINE_FRAMES`].
    inline: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Turns off automatic checkpoints on `writer` and starts the thread on a connection of
    /// its own to `path`. `None` (and SQLite's automatic checkpoints left on) when that
    /// connection cannot be opened.
    pub(crate) fn start(writer: &Connection, path: &Path, flags: rusqlite::OpenFlags) -> Option<Self> {
        let conn = Connection::open_with_flags(path, flags).ok()?;
        writer.pragma_update(None, "wal_autocheckpoint", 0).ok()?;
        let (wake, woken) = sync_channel(1);
        let inline = Arc::new(AtomicBool::new(false));
        let flag = inline.clone();
        let thread = std::thread::Builder::new()
            .name("trigger-sqlite-checkpoint".into())
            .spawn(move || run(conn, woken, flag))
            .ok();
        let Some(thread) = thread else {
            // Automatic checkpoints back on: nothing else would checkpoint this WAL.
            let _ = writer.pragma_update(None, "wal_autocheckpoint", FRAMES);
            return None;
        };
        Some(Checkpointer { wake: Some(wake), thread: Some(thread), inline })
    }

    /// Called by the writer after each commit.
    pub(crate) fn committed(&self, writer: &Connection) {
        // None: another checkpoint was running; try again after the next commit.
        if self.inline.swap(false, Ordering::Relaxed) && checkpoint(writer).is_none() {
            self.inline.store(true, Ordering::Relaxed);
        }
        if let Some(wake) = &self.wake {
            // Full: a wake-up is pending already.
            if let Err(TrySendError::Disconnected(())) = wake.try_send(()) {
                // The thread is gone (it stops only when this is dropped, so it panicked):
                // the writer checkpoints after its commits from now on.
                self.inline.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Checkpointer {
    /// Stops the thread and closes its connection, so that the store's own connection,
    /// closed after this, is the last one and checkpoints and removes the WAL.
    fn drop(&mut self) {
        self.wake.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: Connection, woken: Receiver<()>, inline: Arc<AtomicBool>) {
    while woken.recv().is_ok() {
        if checkpoint(&conn).is_some_and(|(log, _)| log >= INLINE_FRAMES) {
            inline.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(PAUSE);
    }
}

/// A `PASSIVE` checkpoint: the WAL's length in frames and how many of them are now copied
/// into the database, or `None` when another checkpoint was running or it failed.
fn checkpoint(conn: &Connection) -> Option<(i64, i64)> {
    let (busy, log, copied): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .ok()?;
    (busy == 0).then_some((log, copied))
}

/// The path of a file database's connection, `None` for an in-memory one.
pub(crate) fn file_path(conn: &Connection) -> Option<PathBuf> {
    conn.path().filter(|p| !p.is_empty()).map(PathBuf::from)
}
