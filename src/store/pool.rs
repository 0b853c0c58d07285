//! A minimal blocking connection pool: a few long-lived connections handed out one at a time.
//! The relay's database traffic is light (batched writes, API reads), so this is all it needs.

use super::{Result, StoreError};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

type Connect<C> = Box<dyn Fn() -> Result<C> + Send + Sync>;

pub struct Pool<C> {
    state: Mutex<State<C>>,
    freed: Condvar,
    max: usize,
    connect: Connect<C>,
    healthy: fn(&C) -> bool,
}

struct State<C> {
    idle: Vec<C>,
    open: usize,
}

impl<C> Pool<C> {
    pub fn new(max: usize, connect: Connect<C>, healthy: fn(&C) -> bool) -> Pool<C> {
        Pool {
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            max: max.max(1),
            connect,
            healthy,
        }
    }

    /// Runs `f` with a connection. A connection that comes back unhealthy is discarded.
    pub fn with<R>(&self, f: impl FnOnce(&mut C) -> Result<R>) -> Result<R> {
        let mut conn = self.checkout()?;
        let r = f(&mut conn);
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if (self.healthy)(&conn) {
            st.idle.push(conn);
        } else {
            st.open -= 1;
        }
        drop(st);
        self.freed.notify_one();
        r
    }

    fn checkout(&self) -> Result<C> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(c) = st.idle.pop() {
                return Ok(c);
            }
            if st.open < self.max {
                st.open += 1;
                drop(st);
                return match (self.connect)() {
                    Ok(c) => Ok(c),
                    Err(e) => {
                        self.state
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let (guard, timeout) = self
                .freed
                .wait_timeout(st, Duration::from_secs(30))
                .unwrap_or_else(PoisonError::into_inner);
            st = guard;
            if timeout.timed_out() && st.idle.is_empty() && st.open >= self.max {
                return Err(StoreError::Db(
                    "timed out waiting 30s for a free database connection".into(),
                ));
            }
        }
    }
}
