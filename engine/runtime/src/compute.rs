//! A bound on scripts computing at once.
//!
//! Scripts past their inline attempt run on blocking threads, one per run slot (up to
//! `max_concurrent_runs`). The kernel shares the cores among runnable threads alike, so 64
//! scripts in long loops left the async workers (the webhook, the dispatcher, the journal's
//! commits) 2 shares of 66: 165 alerts/s accepted with a p50 of 79 ms. A script thread now
//! computes only while it holds one of [`Compute`]'s shares (by default as many as the cores,
//! so scripts alone can still use the whole machine), and gives it back whenever its script
//! waits in a step (a connector call, a journal write, a sleep, an approval): waiting costs no
//! share, computing waits its turn in line. A script that computed a whole [`SLICE`] while
//! others wait for a share goes to the back of the line, so a long loop slows the others'
//! starts, never stops them.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a script computes before it lets a waiting one take its share.
pub const SLICE: Duration = Duration::from_millis(5);

/// The default bound: as many as the cores. The async workers then compete with that many
/// script threads, not with every slot's.
pub fn default_shares() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Shares of the CPU handed to script threads in the order they asked.
pub(crate) struct Compute {
    line: Mutex<Line>,
    turn: Condvar,
    /// Threads in the line (read without the lock, every few hundred operations).
    waiting: AtomicUsize,
}

struct Line {
    free: usize,
    next_ticket: u64,
    tickets: VecDeque<u64>,
}

impl Compute {
    pub(crate) fn new(shares: usize) -> Compute {
        Compute {
            line: Mutex::new(Line {
                free: shares.max(1),
                next_ticket: 0,
                tickets: VecDeque::new(),
            }),
            turn: Condvar::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Line> {
        // Nothing panics while holding it; a poisoned line is still consistent.
        self.line.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until this thread's turn comes and a share is free.
    fn take(&self) {
        let mut line = self.lock();
        if line.free > 0 && line.tickets.is_empty() {
            line.free -= 1;
            return;
        }
        let ticket = line.next_ticket;
        line.next_ticket += 1;
        line.tickets.push_back(ticket);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("firebreak_scripts_waiting_for_cpu").increment(1.0);
        while !(line.free > 0 && line.tickets.front() == Some(&ticket)) {
            line = self.turn.wait(line).unwrap_or_else(|e| e.into_inner());
        }
        line.tickets.pop_front();
        line.free -= 1;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("firebreak_scripts_waiting_for_cpu").decrement(1.0);
        if line.free > 0 && !line.tickets.is_empty() {
            // Two shares freed at once: the next in line goes too.
            self.turn.notify_all();
        }
    }

    fn give(&self) {
        let mut line = self.lock();
        line.free += 1;
        if !line.tickets.is_empty() {
            self.turn.notify_all();
        }
    }

    /// Threads waiting for a share now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

struct Held {
    compute: Arc<Compute>,
    since: Instant,
}

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// While alive, this thread computes under `compute`'s bound (see [`hold`]).
pub(crate) struct Share(());

/// Waits for a share of `compute`, and holds it until the returned [`Share`] is dropped;
/// [`off_cpu`] and [`tick`] give it up for a while.
pub(crate) fn hold(compute: &Arc<Compute>) -> Share {
    take_held(compute.clone());
    Share(())
}

/// Waits for a share of `compute` and notes it as this thread's.
fn take_held(compute: Arc<Compute>) {
    compute.take();
    HELD.with(|h| {
        *h.borrow_mut() = Some(Held {
            compute,
            since: Instant::now(),
        })
    });
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Some(held) = HELD.with(|h| h.borrow_mut().take()) {
            held.compute.give();
        }
    }
}

/// Runs `wait` (a step blocking on I/O, a timer or a lock) without this thread's share, if it
/// holds one, and takes a share again afterwards, also when `wait` panics.
pub(crate) fn off_cpu<T>(wait: impl FnOnce() -> T) -> T {
    struct Again(Option<Arc<Compute>>);
    impl Drop for Again {
        fn drop(&mut self) {
            if let Some(compute) = self.0.take() {
                take_held(compute);
            }
        }
    }
    let given = HELD.with(|h| h.borrow_mut().take()).map(|held| {
        held.compute.give();
        held.compute
    });
    let _again = Again(given);
    wait()
}

/// Called every few hundred script operations: after a whole [`SLICE`] of computing while
/// others wait, this thread goes to the back of the line.
pub(crate) fn tick() {
    HELD.with(|h| {
        let mut held = h.borrow_mut();
        let Some(held) = held.as_mut() else {
            return;
        };
        if held.compute.waiting() == 0 || held.since.elapsed() < SLICE {
            return;
        }
        held.compute.give();
        held.compute.take();
        held.since = Instant::now();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    /// Counts threads inside `section` at once, and the most ever seen.
    #[derive(Default)]
    struct Inside {
        now: AtomicUsize,
        most: AtomicUsize,
    }

    impl Inside {
        fn section(&self, work: impl FnOnce()) {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            work();
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn spin(d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn no_more_threads_compute_than_there_are_shares() {
        let compute = Arc::new(Compute::new(2));
        let inside = Arc::new(Inside::default());
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (compute, inside) = (compute.clone(), inside.clone());
                std::thread::spawn(move || {
                    let _share = hold(&compute);
                    for _ in 0..20 {
                        inside.section(|| spin(Duration::from_micros(300)));
                        tick();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(inside.most.load(Ordering::SeqCst), 2);
        assert_eq!(compute.lock().free, 2, "every share came back");
    }

    #[test]
    fn a_thread_waiting_in_a_step_holds_no_share() {
        let compute = Arc::new(Compute::new(1));
        let (in_wait, release) = (mpsc::channel::<()>(), mpsc::channel::<()>());
        let (entered, leave) = (in_wait.0, release.1);
        let waiter = {
            let compute = compute.clone();
            std::thread::spawn(move || {
                let _share = hold(&compute);
                off_cpu(|| {
                    entered.send(()).unwrap();
                    leave.recv().unwrap();
                });
            })
        };
        in_wait.1.recv().unwrap();
        // The only share is free while the other thread waits: this takes it at once (on a
        // thread of its own, so that a share kept through the wait fails the test, not hangs it).
        let (took, taken) = mpsc::channel::<()>();
        let taker = {
            let compute = compute.clone();
            std::thread::spawn(move || {
                drop(hold(&compute));
                let _ = took.send(());
            })
        };
        let got = taken.recv_timeout(Duration::from_secs(10));
        release.0.send(()).unwrap();
        assert!(got.is_ok(), "the share was held through the wait");
        taker.join().unwrap();
        waiter.join().unwrap();
        assert_eq!(compute.lock().free, 1);
    }

    #[test]
    fn a_long_computation_lets_a_waiting_one_through_after_its_slice() {
        let compute = Arc::new(Compute::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let long = {
            let (compute, stop) = (compute.clone(), stop.clone());
            std::thread::spawn(move || {
                let _share = hold(&compute);
                // Computes until the short one is done; without ticks it never would be.
                while !stop.load(Ordering::SeqCst) {
                    spin(Duration::from_micros(100));
                    tick();
                }
            })
        };
        while compute.lock().free > 0 {
            std::thread::yield_now();
        }
        let (done, finished) = mpsc::channel::<()>();
        let short = {
            let compute = compute.clone();
            std::thread::spawn(move || {
                let _share = hold(&compute);
                spin(Duration::from_millis(1));
                let _ = done.send(());
            })
        };
        let got = finished.recv_timeout(Duration::from_secs(10));
        stop.store(true, Ordering::SeqCst);
        assert!(got.is_ok(), "the short computation never got a share");
        short.join().unwrap();
        long.join().unwrap();
        assert_eq!(compute.lock().free, 1);
    }

    #[test]
    fn a_panicking_wait_takes_its_share_back_before_the_share_is_dropped() {
        let compute = Arc::new(Compute::new(1));
        let c = compute.clone();
        let panicked = std::thread::spawn(move || {
            let _share = hold(&c);
            off_cpu(|| panic!("a step's wait panicked"));
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(compute.lock().free, 1, "one share, given back once");
    }
}
