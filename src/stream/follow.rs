//! Reading the stream in seq order from any point: from the ring while it holds the next seq,
//! else from the disk log (which was written before the ring), with no gap and no duplicate at
//! the hand-overs. Every consumer (firehose or Jetstream) follows the stream through this.

use super::eventlog::{EventLog, LogFrame, LogReader};
use super::replay_budget::{CHUNK, ReplayBudget};
use super::ring::{Lookup, Ring};
use std::io;
use std::sync::Arc;

pub struct Follower<'a> {
    ring: &'a Ring,
    log: &'a EventLog,
    budget: &'a ReplayBudget,
    last: u64,
    disk: Option<LogReader<'a>>,
    /// Frames read from disk not yet taken from the budget.
    owed: u64,
}

impl<'a> Follower<'a> {
    /// Follows from just after `last`; frames read from the disk log count against `budget`.
    pub fn new(
        ring: &'a Ring,
        log: &'a EventLog,
        budget: &'a ReplayBudget,
        last: u64,
    ) -> Follower<'a> {
        Follower {
            ring,
            log,
            budget,
            last,
            disk: None,
            owed: 0,
        }
    }

    /// The next frame, or `None` when there is nothing more yet.
    pub fn next_frame(&mut self) -> io::Result<Option<Arc<LogFrame>>> {
        loop {
            let f = match self.ring.get(self.last + 1) {
                Lookup::Ready(f) => {
                    self.disk = None;
                    f
                }
                Lookup::NotYet => return Ok(None),
                Lookup::Evicted => {
                    let last = self.last;
                    let r = self.disk.get_or_insert_with(|| self.log.reader(last));
                    match r.next_frame()? {
                        Some(f) => {
                            self.owed += 1;
                            if self.owed == CHUNK {
                                self.owed = 0;
                                self.budget.take(CHUNK);
                            }
                            Arc::new(f)
                        }
                        None => {
                            // The log no longer holds what the ring dropped (retention removed
                            // it under a very slow reader): skip ahead.
                            self.disk = None;
                            let oldest = self.ring.oldest();
                            if oldest == u64::MAX {
                                return Ok(None);
                            }
                            self.last = oldest.saturating_sub(1).max(self.last);
                            continue;
                        }
                    }
                }
            };
            self.last = f.seq;
            return Ok(Some(f));
        }
    }
}
