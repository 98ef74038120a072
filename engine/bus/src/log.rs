//! An append-only JSON-lines file with group commit: the durable half of the embedded bus and
//! of the file state store.
//!
//! One writer thread owns the file. Callers send records over a channel; the thread takes every
//! record waiting, writes them with one `write`, makes them durable with one `fdatasync`, and only
//! then answers each caller, so concurrent publishers share one fsync. A caller may attach an
//! `after` closure that the thread runs once the record is durable and before it answers (the
//! embedded bus uses it to hand events to consumers only when they are on disk).
//!
//! Records nobody waits for (the embedded bus's acks) go through [`GroupLog::append_lazy`]:
//! they wait in a buffer that the next commit takes along, and wake the thread only when it
//! sleeps with nothing due, so under load they cost no wake-up and no fsync of their own. An
//! idle log writes them within [`LAZY_FLUSH`].
//!
//! The file is kept [`PREALLOCATE`] bytes of zeros ahead of its last record, and records
//! overwrite those zeros in place. An `fdatasync` after a write that grows the file must also
//! write the new size (the inode; on a journaling filesystem, a journal commit); one after a
//! write inside the file only flushes the data: measured here, 155 µs instead of 330 µs for a 5 KiB commit, and half the
//! CPU. The size changes once per [`PREALLOCATE`] bytes instead of at every commit. Readers
//! ([`read_records`]) take the first zero byte as the end of the records (JSON lines never hold
//! one); a clean close cuts the zeros off.
//!
//! When the file grows past a threshold it is rewritten from a snapshot of the live state. The
//! writer thread takes the snapshot between two commits, so it holds what the file held up to
//! there; a thread of its own encodes it into `*.tmp`, copies after it the records committed
//! meanwhile and fsyncs, while commits go on. Then the writer copies the last few records,
//! fsyncs, renames over the log and fsyncs the directory. Encoding and writing a large backlog (64 MiB of unacked
//! events) took the writer away from its commits for a third of a second, during which every
//! publisher waited. A failed write or fsync of the log poisons it: what is on disk is unknown,
//! so every later write fails until the store is reopened. A compaction that fails before its
//! rename leaves the log as it was.
//!
//! Start at [`GroupLog::open`] and [`read_records`].

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::BusError;

/// Runs in the writer thread once a record is durable.
pub(crate) type After = Box<dyn FnOnce() + Send>;
/// Captures the live state for a compaction, on the writer thread between two commits: it
/// should take only what it needs (`Arc` clones) and leave the encoding to the [`Encode`] it
/// returns, which runs on the compaction's own thread while commits go on. `None`: the state
/// is gone (its store is being dropped), and the log must stay as it is.
pub(crate) type Snapshot = Box<dyn Fn() -> Option<Encode> + Send>;
/// Encodes a captured state as log records.
pub(crate) type Encode = Box<dyn FnOnce() -> Vec<u8> + Send>;

/// Most records the writer takes in one group commit.
const MAX_BATCH: usize = 8192;

/// Zeros written ahead of the records, so that most commits do not change the file's size.
pub(crate) const PREALLOCATE: u64 = 256 << 10;

/// Longest a lazy record waits for a commit to join before it gets one of its own.
pub(crate) const LAZY_FLUSH: Duration = Duration::from_millis(10);

/// How often an idle writer looks whether a compaction's snapshot is written.
const COMPACTION_POLL: Duration = Duration::from_millis(10);

enum Cmd {
    Append {
        bytes: Vec<u8>,
        after: Option<After>,
        done: oneshot::Sender<Result<(), BusError>>,
    },
    /// Lazy records arrived while the writer slept with nothing due.
    Nudge,
    Close {
        done: oneshot::Sender<()>,
    },
}

/// Lazy records waiting for the next commit.
#[derive(Default)]
struct Lazy {
    bytes: Vec<u8>,
    /// The writer sleeps until the next command and must be nudged for lazy records.
    writer_asleep: bool,
}

/// Handle to the writer thread of one log file.
pub(crate) struct GroupLog {
    tx: mpsc::Sender<Cmd>,
    lazy: Arc<Mutex<Lazy>>,
    path: PathBuf,
    closed: Arc<AtomicBool>,
}

/// Reads every record of `path` (missing file = no records). The records end at the first zero
/// byte (the preallocated tail, see the module docs). A last line that does not parse is a write
/// torn by a crash: it is cut off and reported in the log. Any other bad line is an error.
pub(crate) fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, BusError> {
    let io_err = |source| BusError::Io {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(e)),
    };
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut line = Vec::new();
    let mut good_len: u64 = 0;
    let mut line_no = 0;
    let mut bad: Option<(usize, serde_json::Error)> = None;
    let mut at_zeros = false;
    while !at_zeros {
        line.clear();
        let mut n = reader.read_until(b'\n', &mut line).map_err(io_err)?;
        if let Some(zero) = line.iter().position(|&b| b == 0) {
            // The preallocated zeros (or a write torn inside them): nothing after them was
            // ever committed, since every commit is durable before the next one is written.
            // What follows is dropped, and said so when it is more than zeros.
            let mut rest = line.split_off(zero);
            reader.read_to_end(&mut rest).map_err(io_err)?;
            let dropped = rest.iter().filter(|&&b| b != 0).count();
            if dropped > 0 {
                warn!(path = %path.display(), bytes = dropped, "dropping bytes after the records' end: a commit torn by a crash, never acknowledged");
            }
            n = zero;
            at_zeros = true;
        }
        if n == 0 {
            break;
        }
        line_no += 1;
        if let Some((bad_line, source)) = bad.take() {
            // A bad line followed by more lines is corruption, not a torn tail.
            return Err(BusError::Corrupt {
                path: path.to_owned(),
                line: bad_line,
                source,
            });
        }
        let complete = line.last() == Some(&b'\n');
        match serde_json::from_slice::<T>(&line) {
            Ok(record) if complete => {
                records.push(record);
                good_len += n as u64;
            }
            Ok(_) => {
                bad = Some((
                    line_no,
                    serde_json::Error::io(std::io::Error::other("line has no newline")),
                ))
            }
            Err(e) => bad = Some((line_no, e)),
        }
    }
    if let Some((line, source)) = bad {
        warn!(path = %path.display(), line, error = %source, "cutting off a torn last record");
        let file = OpenOptions::new().write(true).open(path).map_err(io_err)?;
        file.set_len(good_len).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
    }
    Ok(records)
}

/// Writes `bytes` to `path` atomically and durably: tmp file, fsync, rename, fsync directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Where a new log file is written before it is renamed over `path` (at open and by a
/// compaction).
fn tmp_path(path: &Path) -> PathBuf {
    path.with_extension("tmp")
}

/// Opens the file just written by [`write_atomically`] for positioned writes (records go where
/// the zeros are, not at the file's end).
fn open_for_writes(path: &Path) -> std::io::Result<File> {
    // Read too: a compaction copies the records committed while it ran from here.
    OpenOptions::new().read(true).write(true).open(path)
}

/// Writes zeros over `from..to` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 16 << 10] = [0; 16 << 10];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

impl GroupLog {
    /// Replaces `path` with `initial` (the compacted live state), then starts the writer thread.
    /// The file is compacted again, from `snapshot`, whenever it grows past `compact_at` bytes
    /// (or twice the last snapshot, whichever is larger).
    pub(crate) fn open(
        path: &Path,
        initial: Vec<u8>,
        snapshot: Snapshot,
        compact_at: u64,
    ) -> Result<GroupLog, BusError> {
        let io_err = |source| BusError::Io {
            path: path.to_owned(),
            source,
        };
        write_atomically(path, &initial).map_err(io_err)?;
        let file = open_for_writes(path).map_err(io_err)?;
        let (tx, rx) = mpsc::channel();
        let lazy = Arc::new(Mutex::new(Lazy::default()));
        let writer = Writer {
            lazy: lazy.clone(),
            file,
            path: path.to_owned(),
            size: initial.len() as u64,
            allocated: initial.len() as u64,
            snapshot,
            compact_at,
            compaction: None,
            committed: Arc::new(AtomicU64::new(initial.len() as u64)),
            poisoned: false,
        };
        std::thread::Builder::new()
            .name("firebreak-log".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err)?;
        Ok(GroupLog {
            tx,
            lazy,
            path: path.to_owned(),
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Queues `bytes` (whole lines) for the next group commit and returns the receiver of the
    /// outcome. Synchronous, so callers can order appends under their own lock.
    pub(crate) fn append(
        &self,
        bytes: Vec<u8>,
        after: Option<After>,
    ) -> Result<oneshot::Receiver<Result<(), BusError>>, BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append { bytes, after, done })
            .map_err(|_| BusError::Closed)?;
        Ok(rx)
    }

    /// Queues `bytes` (whole lines) to ride along with the next commit; nobody is told when
    /// they are durable. A failed commit poisons the log, which later appends report.
    pub(crate) fn append_lazy(&self, bytes: &[u8]) -> Result<(), BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let mut lazy = self.lazy.lock().unwrap_or_else(|p| p.into_inner());
        lazy.bytes.extend_from_slice(bytes);
        if std::mem::take(&mut lazy.writer_asleep) {
            self.tx.send(Cmd::Nudge).map_err(|_| BusError::Closed)?;
        }
        Ok(())
    }

    /// Appends and waits until the bytes are durable.
    #[cfg(test)]
    pub(crate) async fn append_durable(&self, bytes: Vec<u8>) -> Result<(), BusError> {
        self.append(bytes, None)?
            .await
            .map_err(|_| BusError::Closed)?
    }

    /// Flushes what is queued, stops the writer thread and waits for it to close the file.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let (done, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close { done }).is_ok() {
            let _ = rx.await;
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

struct Writer {
    lazy: Arc<Mutex<Lazy>>,
    file: File,
    path: PathBuf,
    /// Where the records end (the next one is written here).
    size: u64,
    /// The file's length: records, then zeros.
    allocated: u64,
    snapshot: Snapshot,
    compact_at: u64,
    compaction: Option<Compaction>,
    /// `size`, for a compaction's thread to catch up to.
    committed: Arc<AtomicU64>,
    poisoned: bool,
}

/// A compaction under way, written to `*.tmp` by `thread`.
struct Compaction {
    written: mpsc::Receiver<std::io::Result<Written>>,
    thread: std::thread::JoinHandle<()>,
}

/// A compaction's file: the snapshot, then the log's records from where it was taken up to
/// `upto`; `len` bytes in all.
struct Written {
    file: File,
    len: u64,
    upto: u64,
}

/// What a compaction's thread leaves for the writer to copy: it copies the records committed
/// while it wrote until fewer than this are left.
const CATCH_UP_LEFT: u64 = 256 << 10;

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut buf = Vec::new();
        let mut waiters = Vec::new();
        loop {
            let first = match self.next_wait() {
                None => rx.recv().map_err(|_| ()),
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(cmd) => Ok(cmd),
                    Err(mpsc::RecvTimeoutError::Timeout) => Ok(Cmd::Nudge),
                    Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
                },
            };
            let Ok(first) = first else { break };
            let mut close = None;
            buf.clear();
            let mut next = Some(first);
            // Whatever queued while the last commit ran shares this one; nothing waits for
            // company. (A 250 µs linger for as many callers as the last commit served cost
            // more than it saved: each caller arriving during it woke this thread, and the
            // callers came spread out behind the runs. `docs/BENCHMARKS.md`, 12-07.)
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Append { bytes, after, done } => {
                        buf.extend_from_slice(&bytes);
                        waiters.push((after, done));
                    }
                    Cmd::Nudge => {}
                    Cmd::Close { done } => {
                        close = Some(done);
                        break;
                    }
                }
                if waiters.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            // Lazy records were queued before the commands taken after them; none of them
            // depends on the others' order.
            let lazy = std::mem::take(&mut self.lazy().bytes);
            buf.extend_from_slice(&lazy);
            let outcome = self.commit(&buf);
            for (i, (after, done)) in waiters.drain(..).enumerate() {
                let result = match &outcome {
                    Ok(()) => {
                        if let Some(after) = after {
                            after();
                        }
                        Ok(())
                    }
                    // The first waiter gets the cause; the rest learn the log is poisoned.
                    Err(e) if i == 0 => Err(BusError::Io {
                        path: self.path.clone(),
                        source: std::io::Error::new(e.kind(), e.to_string()),
                    }),
                    Err(_) => Err(BusError::Poisoned {
                        path: self.path.clone(),
                    }),
                };
                let _ = done.send(result);
            }
            if let Some(done) = close {
                let lazy = std::mem::take(&mut self.lazy().bytes);
                let _ = self.commit(&lazy);
                if let Some(compaction) = self.compaction.take() {
                    if self.poisoned {
                        self.abandon(compaction);
                    } else {
                        let written = compaction.written.recv();
                        self.finish_compaction(compaction, written);
                    }
                }
                if !self.poisoned {
                    let _ = self.file.set_len(self.size);
                }
                let _ = self.file.sync_all();
                let _ = done.send(());
                return;
            }
            if outcome.is_ok() {
                self.compact();
            }
        }
        // Dropped without a close: the log stays as it is.
        if let Some(compaction) = self.compaction.take() {
            self.abandon(compaction);
        }
    }

    /// Waits for a compaction's thread and throws its snapshot away.
    fn abandon(&self, compaction: Compaction) {
        let _ = compaction.thread.join();
        let _ = std::fs::remove_file(tmp_path(&self.path));
    }

    fn lazy(&self) -> std::sync::MutexGuard<'_, Lazy> {
        self.lazy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long to wait for the next command: at most [`LAZY_FLUSH`] while lazy records wait,
    /// [`COMPACTION_POLL`] while a compaction runs, else until one comes (lazy appends then
    /// nudge).
    fn next_wait(&self) -> Option<Duration> {
        let mut lazy = self.lazy();
        if !lazy.bytes.is_empty() {
            Some(LAZY_FLUSH)
        } else if self.compaction.is_some() {
            Some(COMPACTION_POLL)
        } else {
            lazy.writer_asleep = true;
            None
        }
    }

    fn commit(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.poisoned {
            return Err(std::io::Error::other(
                "log is poisoned by an earlier failure",
            ));
        }
        if buf.is_empty() {
            return Ok(());
        }
        let end = self.size + buf.len() as u64;
        let mut result = self.file.write_all_at(buf, self.size);
        if result.is_ok() && end > self.allocated {
            result = write_zeros(&self.file, end, end + PREALLOCATE);
            self.allocated = end + PREALLOCATE;
        }
        let result = result.and_then(|()| self.file.sync_data());
        match &result {
            Ok(()) => {
                self.size += buf.len() as u64;
                self.committed.store(self.size, Ordering::Release);
            }
            Err(e) => {
                error!(path = %self.path.display(), error = %e, "log write failed; refusing further writes");
                self.poisoned = true;
            }
        }
        result
    }

    /// Starts a compaction once the file has grown past `compact_at`, or switches to the one
    /// under way once its snapshot is written. Runs between commits only.
    fn compact(&mut self) {
        if self.poisoned {
            return;
        }
        let Some(compaction) = &self.compaction else {
            if self.size > self.compact_at {
                self.start_compaction();
            }
            return;
        };
        let written = match compaction.written.try_recv() {
            Err(mpsc::TryRecvError::Empty) => return,
            Ok(written) => Ok(written),
            Err(mpsc::TryRecvError::Disconnected) => Err(mpsc::RecvError),
        };
        let compaction = self.compaction.take().expect("matched above");
        self.finish_compaction(compaction, written);
    }

    /// Captures the state as the file holds it now and writes it to `*.tmp` on a thread of
    /// its own, followed by the records committed meanwhile.
    fn start_compaction(&mut self) {
        let Some(encode) = (self.snapshot)() else {
            return;
        };
        let from = self.size;
        let tmp = tmp_path(&self.path);
        let source = File::open(&self.path);
        let committed = self.committed.clone();
        let (done, written) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("log-compact".into())
            .spawn(move || {
                let _ = done.send(write_compacted(encode, &tmp, source, from, &committed));
            });
        match spawned {
            Ok(thread) => self.compaction = Some(Compaction { written, thread }),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot start a thread to compact the log; trying again when it has doubled");
                self.compact_at = self.compact_at.max(2 * self.size);
            }
        }
    }

    /// Puts the written snapshot in the log's place: the last records committed since it was
    /// taken follow it, then fsync, rename and fsync the directory.
    fn finish_compaction(
        &mut self,
        compaction: Compaction,
        written: Result<std::io::Result<Written>, mpsc::RecvError>,
    ) {
        let _ = compaction.thread.join();
        let tmp = tmp_path(&self.path);
        let copied = match written {
            Ok(Ok(Written { file, len, upto })) => {
                let left = self.size - upto;
                copy_at(&self.file, upto, left, &file, len)
                    .and_then(|()| file.sync_data())
                    .map(|()| (file, len + left))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("the compaction thread panicked")),
        };
        let renamed = copied.and_then(|(file, size)| {
            std::fs::rename(&tmp, &self.path)?;
            Ok((file, size))
        });
        let (file, size) = match renamed {
            Ok(done) => done,
            Err(e) => {
                // Nothing replaced the log: it goes on as it is, and is compacted again once
                // it has doubled.
                warn!(path = %self.path.display(), error = %e, "log compaction failed; the log is kept as it was");
                let _ = std::fs::remove_file(&tmp);
                self.compact_at = self.compact_at.max(2 * self.size);
                return;
            }
        };
        info!(path = %self.path.display(), from = self.size, to = size, "log compacted");
        close_elsewhere(std::mem::replace(&mut self.file, file));
        self.size = size;
        self.committed.store(size, Ordering::Release);
        self.allocated = size;
        self.compact_at = self.compact_at.max(2 * size);
        let dir_synced = match self.path.parent() {
            Some(dir) => File::open(dir).and_then(|dir| dir.sync_all()),
            None => Ok(()),
        };
        if let Err(e) = dir_synced {
            // The rename may not survive a crash, and the records written from now on would
            // then be lost with the new file; stop writing rather than guess.
            error!(path = %self.path.display(), error = %e, "log compaction's rename not durable; refusing further writes");
            self.poisoned = true;
        }
    }
}

/// A compaction's thread: encodes the snapshot taken at `from` into `tmp`, then copies the
/// log's records committed since from `source` until fewer than [`CATCH_UP_LEFT`] bytes are
/// left (a backlog of 300 MiB takes seconds to write, and as many records come meanwhile),
/// and fsyncs.
fn write_compacted(
    encode: Encode,
    tmp: &Path,
    source: std::io::Result<File>,
    from: u64,
    committed: &AtomicU64,
) -> std::io::Result<Written> {
    let source = source?;
    let bytes = encode();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    file.write_all(&bytes)?;
    let (mut len, mut upto) = (bytes.len() as u64, from);
    drop(bytes);
    loop {
        // Committed records are durable and never rewritten: safe to read beside the writer.
        let now = committed.load(Ordering::Acquire);
        if now - upto < CATCH_UP_LEFT {
            break;
        }
        copy_at(&source, upto, now - upto, &file, len)?;
        len += now - upto;
        upto = now;
    }
    file.sync_data()?;
    Ok(Written { file, len, upto })
}

/// Copies `len` bytes at `from` in `src` to `at` in `dst`.
fn copy_at(src: &File, from: u64, len: u64, dst: &File, at: u64) -> std::io::Result<()> {
    let mut buf = vec![0; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], from + done)?;
        dst.write_all_at(&buf[..n], at + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Closes a log file the compaction replaced, on a thread of its own. The rename unlinked it,
/// so its last close frees its blocks: 20 ms for a 64 MiB bus log on this project's VM
/// (`strace -T` of the writer thread under `wrk -c16`), during which every publisher waited
/// for its commit.
fn close_elsewhere(file: File) {
    let spawned = std::thread::Builder::new()
        .name("log-close".into())
        .spawn(move || drop(file));
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start a thread to close the replaced log; closing it here");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn torn_last_line_is_cut_off_and_earlier_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(&path, b"{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let records: Vec<Value> = read_records(&path).unwrap();
        assert_eq!(records, vec![json!({"a": 1}), json!({"a": 2})]);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"a\":2}\n");
    }

    #[test]
    fn the_records_end_at_the_preallocated_zeros_and_a_write_torn_inside_them_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut bytes = b"{\"a\":1}\n{\"a\":2}\n".to_vec();
        bytes.resize(bytes.len() + 4096, 0);
        std::fs::write(&path, &bytes).unwrap();
        let records: Vec<Value> = read_records(&path).unwrap();
        assert_eq!(records, vec![json!({"a": 1}), json!({"a": 2})]);

        // A crash in the middle of a commit: part of its record reached the disk, the rest of
        // the page is still zeros, and a later page of the same write came through.
        let mut torn = b"{\"a\":1}\n{\"a\":2}\n{\"a\":".to_vec();
        torn.resize(torn.len() + 100, 0);
        torn.extend_from_slice(b"3}\n{\"a\":4}\n");
        torn.resize(torn.len() + 4096, 0);
        std::fs::write(&path, &torn).unwrap();
        let records: Vec<Value> = read_records(&path).unwrap();
        assert_eq!(records, vec![json!({"a": 1}), json!({"a": 2})]);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"a\":2}\n");
    }

    /// A commit inside the file does not change its size, so its `fdatasync` has no metadata
    /// to commit (see the module docs); the size changes once per [`PREALLOCATE`] bytes.
    #[tokio::test]
    async fn commits_overwrite_preallocated_zeros_and_a_clean_close_cuts_them_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let log = GroupLog::open(
            &path,
            b"{\"a\":0}\n".to_vec(),
            Box::new(|| Some(Box::new(Vec::new))),
            u64::MAX,
        )
        .unwrap();
        let len = || std::fs::metadata(&path).unwrap().len();
        log.append_durable(b"{\"a\":1}\n".to_vec()).await.unwrap();
        let allocated = len();
        assert!(allocated >= PREALLOCATE, "preallocated: {allocated} bytes");
        let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(1000));
        let fit = (allocated - 16) / line.len() as u64 - 1;
        for _ in 0..fit {
            log.append_durable(line.clone().into_bytes()).await.unwrap();
            assert_eq!(
                len(),
                allocated,
                "a commit inside the zeros changed the size"
            );
        }
        let records: Vec<Value> = read_records(&path).unwrap();
        assert_eq!(records.len() as u64, 2 + fit);
        // Past the zeros: the file grows by another stretch of them.
        for _ in 0..3 {
            log.append_durable(line.clone().into_bytes()).await.unwrap();
        }
        assert!(len() > allocated + line.len() as u64, "{} bytes", len());
        log.close().await;
        let expected = 8 + 8 + (fit + 3) * line.len() as u64;
        assert_eq!(len(), expected, "the clean close cut the zeros off");
        assert_eq!(read_records::<Value>(&path).unwrap().len() as u64, 5 + fit);
    }

    #[test]
    fn a_bad_line_in_the_middle_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(&path, b"{\"a\":1}\nnot json\n{\"a\":3}\n").unwrap();
        let err = read_records::<Value>(&path).unwrap_err();
        assert!(
            matches!(err, BusError::Corrupt { line: 2, .. }),
            "unexpected {err:?}"
        );
    }

    #[tokio::test]
    async fn appends_are_durable_and_compaction_keeps_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let snapshot: Snapshot = Box::new(|| Some(Box::new(|| b"{\"snap\":true}\n".to_vec())));
        let log = GroupLog::open(&path, b"{\"a\":0}\n".to_vec(), snapshot, 64).unwrap();
        log.append_durable(b"{\"a\":1}\n".to_vec()).await.unwrap();
        let records: Vec<Value> = read_records(&path).unwrap();
        assert_eq!(records, vec![json!({"a": 0}), json!({"a": 1})]);
        // Past 64 bytes the writer compacts to the snapshot after the commit.
        log.append_durable(vec![b' '; 80].into_iter().chain(*b"{\"a\":2}\n").collect())
            .await
            .unwrap();
        log.close().await;
        let records: Vec<Value> = read_records(&path).unwrap();
        assert_eq!(records, vec![json!({"snap": true})]);
        assert!(matches!(
            log.append_durable(b"{}\n".to_vec()).await,
            Err(BusError::Closed)
        ));
    }

    /// The snapshot is encoded and written off the writer thread: commits made meanwhile are
    /// durable at once, and follow the snapshot in the compacted file (the compaction's thread
    /// copies most of them, the writer the last ones).
    #[tokio::test]
    async fn commits_go_on_while_a_compaction_writes_and_follow_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let (open_gate, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(Some(gate));
        let snapshot: Snapshot = Box::new(move || {
            let gate = gate.lock().unwrap().take();
            Some(Box::new(move || {
                // Held until the test has committed behind the compaction's back.
                if let Some(gate) = gate {
                    let _ = gate.recv();
                }
                b"{\"snap\":true}\n".to_vec()
            }))
        });
        let log = GroupLog::open(&path, Vec::new(), snapshot, 64).unwrap();
        // Past 64 bytes: the compaction starts after this commit and waits at the gate.
        log.append_durable(vec![b' '; 80].into_iter().chain(*b"{\"a\":1}\n").collect())
            .await
            .unwrap();
        let mut compacted = vec![json!({"snap": true})];
        // More than the compaction's thread leaves for the writer to copy.
        let pad = "x".repeat(10 << 10);
        for a in 2..40 {
            let record = json!({"a": a, "pad": pad});
            let line = format!("{record}\n").into_bytes();
            let committed =
                tokio::time::timeout(Duration::from_secs(10), log.append_durable(line)).await;
            assert!(committed.is_ok(), "commit {a} waited for the compaction");
            assert_eq!(lines_of(&path).last(), Some(&record));
            compacted.push(record);
        }
        open_gate.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lines_of(&path).first() != Some(&json!({"snap": true})) {
            assert!(std::time::Instant::now() < deadline, "never compacted");
            tokio::time::sleep(COMPACTION_POLL).await;
        }
        assert_eq!(lines_of(&path), compacted);
        assert!(!path.with_extension("tmp").exists());
        // The writer goes on in the new file.
        log.append_durable(b"{\"a\":40}\n".to_vec()).await.unwrap();
        log.close().await;
        compacted.push(json!({"a": 40}));
        assert_eq!(lines_of(&path), compacted);
    }

    /// A compaction that fails before its rename (here its encoder panics) leaves the log whole
    /// and writable.
    #[tokio::test]
    async fn a_failed_compaction_keeps_the_log_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let snapshot: Snapshot = Box::new(|| Some(Box::new(|| panic!("encoding failed"))));
        let log = GroupLog::open(&path, b"{\"a\":0}\n".to_vec(), snapshot, 64).unwrap();
        let mut expected = vec![json!({"a": 0})];
        for a in 1..20 {
            let line = format!("{{\"a\":{a},\"pad\":\"{}\"}}\n", "x".repeat(40));
            log.append_durable(line.into_bytes()).await.unwrap();
            expected.push(json!({"a": a, "pad": "x".repeat(40)}));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        log.close().await;
        assert_eq!(lines_of(&path), expected);
        assert!(!path.with_extension("tmp").exists());
    }

    /// A store being dropped has no state to snapshot: its log is not compacted (an empty
    /// snapshot would have replaced every record).
    #[tokio::test]
    async fn without_a_state_the_log_is_not_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let log = GroupLog::open(&path, b"{\"a\":0}\n".to_vec(), Box::new(|| None), 16).unwrap();
        for a in 1..5 {
            let line = format!("{{\"a\":{a}}}\n").into_bytes();
            log.append_durable(line).await.unwrap();
        }
        log.close().await;
        let expected: Vec<Value> = (0..5).map(|a| json!({"a": a})).collect();
        assert_eq!(lines_of(&path), expected);
    }

    fn lines_of(path: &Path) -> Vec<Value> {
        read_records(path).unwrap()
    }

    #[tokio::test]
    async fn lazy_records_ride_with_the_next_commit_or_reach_the_file_on_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let log = GroupLog::open(
            &path,
            Vec::new(),
            Box::new(|| Some(Box::new(Vec::new))),
            u64::MAX,
        )
        .unwrap();

        // With a commit: the lazy line is in the file once the commit is durable.
        log.append_lazy(b"{\"lazy\":1}\n").unwrap();
        log.append_durable(b"{\"a\":1}\n".to_vec()).await.unwrap();
        let lines = lines_of(&path);
        assert!(lines.contains(&json!({"lazy": 1})), "{lines:?}");

        // On an idle log: the writer sleeps with nothing due, is nudged, and writes it alone.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        log.append_lazy(b"{\"lazy\":2}\n").unwrap();
        while !lines_of(&path).contains(&json!({"lazy": 2})) {
            assert!(
                std::time::Instant::now() < deadline,
                "lazy record never written"
            );
            tokio::time::sleep(LAZY_FLUSH).await;
        }

        // Close writes what is still buffered.
        log.append_lazy(b"{\"lazy\":3}\n").unwrap();
        log.close().await;
        assert!(lines_of(&path).contains(&json!({"lazy": 3})));
        assert!(matches!(log.append_lazy(b"{}\n"), Err(BusError::Closed)));
    }
}
