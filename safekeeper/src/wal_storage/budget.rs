//! How many segment files all timelines keep open between writes.
//!
//! Each streaming timeline holds its current segment open, and each proposer connection
//! a socket: at ten thousand timelines that is twenty thousand descriptors, the whole of a
//! common limit. Running out makes an `open` fail in the middle of a step (the timeline
//! breaks and is reloaded) — worse, for the file a fsync needed. So the server gives
//! segment files a budget below the process's limit: when more are open than the
//! budget, a timeline whose ingest loop goes idle closes its segment (everything in it is
//! flushed by then) and opens it again at its next write. Under the budget nothing is
//! ever closed early.
//!
//! Owns: [`OpenSegments`] and the slot an open segment holds. Must never: close a file
//! with unflushed writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The shared count of open segment files and its budget.
#[derive(Clone, Debug)]
pub struct OpenSegments {
    open: Arc<AtomicUsize>,
    max: usize,
}

impl OpenSegments {
    /// A budget of `max` open segment files.
    pub fn new(max: usize) -> Self {
        OpenSegments {
            open: Arc::new(AtomicUsize::new(0)),
            max: max.max(1),
        }
    }

    /// Segment files open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// True if more are open than the budget allows.
    pub fn over(&self) -> bool {
        self.open() > self.max
    }

    /// Counts one more open file until the slot is dropped.
    pub(super) fn take(&self) -> Slot {
        self.open.fetch_add(1, Ordering::Relaxed);
        Slot(self.open.clone())
    }
}

/// One open segment file's place in the budget; released when dropped.
#[derive(Debug)]
pub(super) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
