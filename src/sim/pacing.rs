//! Background traffic: events generated (signed) ahead of time, then emitted at a paced rate.

use super::*;

/// Background generation (ahead of time) and paced emission.
pub(super) struct Traffic {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) emitted: Arc<AtomicU64>,
    pub(super) queue: Arc<Mutex<std::collections::VecDeque<Planned>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub(super) fn start(
        world: Arc<World>,
        rate: f64,
        prefill: usize,
        limit: Option<usize>,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let emitted = Arc::new(AtomicU64::new(0));
        let queue: Arc<Mutex<std::collections::VecDeque<Planned>>> =
            Arc::new(Mutex::new(Default::default()));
        let cap = prefill.max((rate * 2.0).min(1e7) as usize).max(64);
        let mut threads = Vec::new();
        {
            let (w, q, st) = (world.clone(), queue.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut rng = traffic::Rng::new(w.seed ^ 0x5eed);
                let mut made = 0usize;
                while !st.load(Ordering::Relaxed) && limit.is_none_or(|l| made < l) {
                    if q.lock().unwrap_or_else(PoisonError::into_inner).len() >= cap {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    let planned = traffic::random_action(&w, &mut rng);
                    made += planned.len();
                    q.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(planned);
                }
            }));
        }
        {
            let (w, q, st, em) = (world, queue.clone(), stop.clone(), emitted.clone());
            threads.push(std::thread::spawn(move || {
                while q.lock().unwrap_or_else(PoisonError::into_inner).len() < prefill
                    && !st.load(Ordering::Relaxed)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let start = Instant::now();
                let mut sent = 0u64;
                while !st.load(Ordering::Relaxed) {
                    let due = (start.elapsed().as_secs_f64() * rate) as u64;
                    while sent < due {
                        let Some(p) = q.lock().unwrap_or_else(PoisonError::into_inner).pop_front()
                        else {
                            break;
                        };
                        w.emit(p);
                        sent += 1;
                        em.store(sent, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }));
        }
        Traffic {
            stop,
            emitted,
            queue,
            threads,
        }
    }

    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
