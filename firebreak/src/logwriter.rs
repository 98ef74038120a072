//! Log lines leave on a thread of their own, so an async worker never waits on stderr.
//!
//! Written straight to stderr, every line was a `write` on the worker that logged it: 2–20 µs
//! on a log file on this VM's disk (default logging cost 7–11 µs per alert over `warn` in one
//! `run.sh` session, 59 µs in a slow hour; three lines per run), and a stderr nobody drains (a
//! full pipe to a stalled log collector) would hold every task on that worker. Here a line is copied into a shared buffer; the writer thread, woken by the
//! first line, waits [`LINGER`] and writes whatever has gathered with one `write`, so under
//! load many lines share one call and one wake-up.
//!
//! Nothing is dropped: past [`CAPACITY`] buffered bytes a logger waits for the thread (as it
//! would have waited on stderr). What a crash can lose is what the thread had not written yet
//! (about [`LINGER`]'s worth of lines when it keeps up); the [`LogWriter`]'s drop (at the end
//! of `main`) writes the rest.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Bytes buffered before a logger waits for the writer thread.
const CAPACITY: usize = 1 << 20;

/// How long the thread, woken by a line, waits for more before it writes.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

struct State {
    buf: Vec<u8>,
    /// The writer thread waits for lines (so a new line must wake it).
    idle: bool,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Lines to write, or the writer is closed.
    lines: Condvar,
    /// The buffer has room again.
    room: Condvar,
    /// Held while a batch is written (and by lines logged after the drop).
    sink: Mutex<Box<dyn Write + Send>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the buffered lines and writes them (the caller holds `sink`).
    fn write_out(&self, sink: &mut dyn Write, batch: &mut Vec<u8>) {
        std::mem::swap(&mut self.state().buf, batch);
        self.room.notify_all();
        // A log line that cannot be written has nowhere else to go.
        let _ = sink.write_all(batch).and_then(|()| sink.flush());
        batch.clear();
    }
}

/// The writer thread and its buffer; dropping it writes what is left and joins the thread.
pub struct LogWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Starts the thread writing to `sink` (stderr in the engine).
    pub fn spawn(sink: impl Write + Send + 'static) -> io::Result<LogWriter> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(64 << 10),
                idle: false,
                closed: false,
            }),
            lines: Condvar::new(),
            room: Condvar::new(),
            sink: Mutex::new(Box::new(sink)),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || write_loop(&shared))?
        };
        Ok(LogWriter {
            shared,
            thread: Some(thread),
        })
    }

    /// What the fmt layer writes each line to.
    pub fn handle(&self) -> LogHandle {
        LogHandle(self.shared.clone())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.shared.state().closed = true;
        self.shared.lines.notify_all();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop(shared: &Shared) {
    let mut batch = Vec::with_capacity(64 << 10);
    loop {
        let woken = {
            let mut state = shared.state();
            let mut woken = false;
            while state.buf.is_empty() && !state.closed {
                state.idle = true;
                woken = true;
                state = shared.lines.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            state.idle = false;
            if state.buf.is_empty() && state.closed {
                return;
            }
            woken && !state.closed
        };
        if woken {
            // Let the lines of the next moment join this one's write: woken by every first
            // line, the thread took 1.2 wake-ups and writes per alert under load.
            std::thread::sleep(LINGER);
        }
        let mut sink = shared.sink.lock().unwrap_or_else(|p| p.into_inner());
        shared.write_out(&mut **sink, &mut batch);
    }
}

/// A cheap handle on the buffer, for `fmt::layer().with_writer(..)`.
#[derive(Clone)]
pub struct LogHandle(Arc<Shared>);

/// One line's writer (the fmt layer formats a whole line, then writes it once).
pub struct LogLine<'a>(&'a Shared);

impl Write for LogLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let shared = self.0;
        let mut state = shared.state();
        while state.buf.len() >= CAPACITY && !state.closed {
            state = shared.room.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.closed {
            // After the writer's drop (the end of `main`): straight to the sink.
            drop(state);
            let mut sink = shared.sink.lock().unwrap_or_else(|p| p.into_inner());
            sink.write_all(bytes)?;
            return Ok(bytes.len());
        }
        state.buf.extend_from_slice(bytes);
        let wake = std::mem::take(&mut state.idle);
        drop(state);
        if wake {
            shared.lines.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogHandle {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> LogLine<'a> {
        LogLine(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use tracing_subscriber::fmt::MakeWriter as _;

    /// A sink the test reads back.
    #[derive(Clone, Default)]
    struct Collected(Arc<Mutex<Vec<u8>>>);

    impl Write for Collected {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_from_every_thread_arrives_whole_and_in_each_threads_order() {
        let sink = Collected::default();
        let writer = LogWriter::spawn(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let handle = writer.handle();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        let line = format!("thread {t} line {i}\n");
                        handle.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(writer);
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut next = [0; 4];
        for line in out.lines() {
            let (t, i) = line
                .strip_prefix("thread ")
                .and_then(|rest| rest.split_once(" line "))
                .unwrap_or_else(|| panic!("a torn line: {line:?}"));
            let t: usize = t.parse().unwrap();
            assert_eq!(
                i.parse::<usize>().unwrap(),
                next[t],
                "thread {t} out of order"
            );
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4]);
    }

    /// A sink that blocks until the test lets it go: loggers do not wait for it while the
    /// buffer has room, and wait (dropping nothing) once it is full.
    struct Gate {
        open: Arc<Mutex<mpsc::Receiver<()>>>,
        out: Collected,
    }

    impl Write for Gate {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            // Bounded, so a failing test ends instead of hanging in the writer's join.
            let _ = self
                .open
                .lock()
                .unwrap()
                .recv_timeout(std::time::Duration::from_secs(10));
            self.out.write(bytes)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_does_not_hold_loggers_until_the_buffer_is_full_and_loses_nothing() {
        let (open, gate) = mpsc::channel();
        let out = Collected::default();
        let writer = LogWriter::spawn(Gate {
            open: Arc::new(Mutex::new(gate)),
            out: out.clone(),
        })
        .unwrap();
        let handle = writer.handle();
        // The first line wakes the thread, which takes it and blocks in the sink with it.
        handle.make_writer().write_all(b"first\n").unwrap();
        while !handle.0.state().buf.is_empty() {
            std::thread::yield_now();
        }
        // Many more lines while the sink is stalled: they go to the buffer, no logger waits.
        let mut line = [b'x'; 100];
        line[99] = b'\n';
        let lines = CAPACITY / 100 + 1;
        for _ in 0..lines {
            handle.make_writer().write_all(&line).unwrap();
        }
        // The buffer is full now: the next logger waits until the sink takes the buffer.
        let (done_tx, done) = mpsc::channel();
        let late = {
            let handle = handle.clone();
            std::thread::spawn(move || {
                handle.make_writer().write_all(b"late\n").unwrap();
                done_tx.send(()).unwrap();
            })
        };
        assert!(
            done.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "a logger went on past a full buffer"
        );
        // Open the gate for every write from here on.
        for _ in 0..4 {
            open.send(()).unwrap();
        }
        done.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the waiting logger went on once the sink took the buffer");
        late.join().unwrap();
        drop(open);
        drop(writer);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.starts_with("first\n") && text.ends_with("late\n"),
            "{}",
            &text[..20]
        );
        assert_eq!(text.lines().count(), 1 + lines + 1);
    }
}
