//! [`FileStateStore`]: the embedded [`StateStore`], in memory with a group-committed log file
//! (`<dir>/state.log`) behind it.
//!
//! Cooldowns and budget timestamps are written to the log and a call returns once its record
//! is durable (and applied in memory); on open the log is replayed and compacted. Locks stay in
//! memory only: in embedded mode every lock owner lives in this process, so after a restart no
//! owner is left and every lock is free anyway. Lock expiry uses tokio's clock.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::info;

use super::lock_dir;
use crate::log::{GroupLog, Snapshot, read_records};
use crate::state::{BUDGET_RETENTION, check_key};
use crate::{BusError, StateStore};

/// One line of `state.log`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Cooldown { key: String, until: Timestamp },
    RunAt { key: String, at: Timestamp },
}

#[derive(Default)]
struct State {
    locks: foldhash::HashMap<String, (String, Instant)>,
    cooldowns: foldhash::HashMap<String, Timestamp>,
    runs_at: foldhash::HashMap<String, Vec<Timestamp>>,
}

impl State {
    fn apply(&mut self, record: Record) {
        match record {
            Record::Cooldown { key, until } => {
                self.cooldowns.insert(key, until);
            }
            Record::RunAt { key, at } => {
                let cutoff = budget_cutoff();
                let times = self.runs_at.entry(key).or_default();
                times.retain(|t| *t >= cutoff);
                times.push(at);
            }
        }
    }

    /// The live state as log records (for compaction).
    fn snapshot(&self) -> Vec<u8> {
        let now = Timestamp::now();
        let cutoff = budget_cutoff();
        let mut out = Vec::new();
        let mut write = |record: &Record| {
            if serde_json::to_writer(&mut out, record).is_ok() {
                out.push(b'\n');
            }
        };
        for (key, until) in &self.cooldowns {
            if *until > now {
                write(&Record::Cooldown {
                    key: key.clone(),
                    until: *until,
                });
            }
        }
        for (key, times) in &self.runs_at {
            for at in times.iter().filter(|t| **t >= cutoff) {
                write(&Record::RunAt {
                    key: key.clone(),
                    at: *at,
                });
            }
        }
        out
    }
}

fn budget_cutoff() -> Timestamp {
    Timestamp::now()
        .checked_sub(jiff::SignedDuration::try_from(BUDGET_RETENTION).expect("7 days fits"))
        .unwrap_or(Timestamp::MIN)
}

/// The embedded state store; see the module docs.
pub struct FileStateStore {
    state: Arc<Mutex<State>>,
    log: GroupLog,
    lock: Mutex<Option<File>>,
}

impl FileStateStore {
    /// Opens (creating if needed) the state stored in `dir/state.log`. Fails with
    /// [`BusError::Locked`] if another store has it open.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStateStore, BusError> {
        FileStateStore::open_compacting_at(dir.as_ref(), 16 << 20)
    }

    fn open_compacting_at(dir: &Path, compact_at: u64) -> Result<FileStateStore, BusError> {
        std::fs::create_dir_all(dir).map_err(|source| BusError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let lock = lock_dir(dir, "state.lock")?;
        let path = dir.join("state.log");
        let mut state = State::default();
        for record in read_records::<Record>(&path)? {
            state.apply(record);
        }
        let initial = state.snapshot();
        info!(dir = %dir.display(), cooldowns = state.cooldowns.len(), "state store open");
        let state = Arc::new(Mutex::new(state));
        let weak = Arc::downgrade(&state);
        // The state is small: encoded under its lock, written on the compaction's thread.
        let snapshot: Snapshot = Box::new(move || {
            let state = weak.upgrade()?;
            let bytes = state.lock().unwrap_or_else(|p| p.into_inner()).snapshot();
            Some(Box::new(move || bytes))
        });
        let log = GroupLog::open(&path, initial, snapshot, compact_at)?;
        Ok(FileStateStore {
            state,
            log,
            lock: Mutex::new(Some(lock)),
        })
    }

    /// Flushes queued writes, stops the writer and releases the directory lock; later writes
    /// fail with [`BusError::Closed`].
    pub async fn close(&self) {
        self.log.close().await;
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `record`; once it is durable the writer thread applies it in memory, so memory
    /// changes in log order and a compaction snapshot holds exactly what the log held (a record
    /// applied before its append could be written twice). Resolves once applied.
    fn write(&self, record: Record) -> BoxFuture<'_, Result<(), BusError>> {
        let line = serde_json::to_vec(&record).map(|mut l| {
            l.push(b'\n');
            l
        });
        let sent = match line {
            Err(source) => Err(BusError::Codec {
                what: format!("state record for {}", self.log.path().display()),
                source,
            }),
            Ok(line) => {
                let state = Arc::clone(&self.state);
                let apply: crate::log::After = Box::new(move || {
                    state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .apply(record)
                });
                self.log.append(line, Some(apply))
            }
        };
        Box::pin(async move { sent?.await.map_err(|_| BusError::Closed)? })
    }
}

impl StateStore for FileStateStore {
    fn try_lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        let result = check_key(key).map(|()| {
            let mut state = self.state();
            let now = Instant::now();
            let free = match state.locks.get(key) {
                None => true,
                Some((holder, expires)) => holder == owner || *expires <= now,
            };
            if free {
                state
                    .locks
                    .insert(key.to_owned(), (owner.to_owned(), now + ttl));
            }
            free
        });
        Box::pin(async move { result })
    }

    /// Its locks are this process's alone: no replica takes a run over from it.
    fn try_lock_run(
        &self,
        key: &str,
        run_id: &str,
        _team: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        self.try_lock(key, run_id, ttl)
    }

    fn refresh_lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        let result = check_key(key).map(|()| {
            let mut state = self.state();
            match state.locks.get_mut(key) {
                Some((holder, expires)) if holder == owner => {
                    *expires = Instant::now() + ttl;
                    true
                }
                _ => false,
            }
        });
        Box::pin(async move { result })
    }

    fn unlock(&self, key: &str, owner: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        let result = check_key(key).map(|()| {
            let mut state = self.state();
            let held = state
                .locks
                .get(key)
                .is_some_and(|(holder, _)| holder == owner);
            if held {
                state.locks.remove(key);
            }
            held
        });
        Box::pin(async move { result })
    }

    fn lock_holder(&self, key: &str) -> BoxFuture<'_, Result<Option<String>, BusError>> {
        let result = check_key(key).map(|()| {
            let state = self.state();
            state
                .locks
                .get(key)
                .filter(|(_, expires)| *expires > Instant::now())
                .map(|(holder, _)| holder.clone())
        });
        Box::pin(async move { result })
    }

    fn set_cooldown(&self, key: &str, until: Timestamp) -> BoxFuture<'_, Result<(), BusError>> {
        if let Err(e) = check_key(key) {
            return Box::pin(async move { Err(e) });
        }
        self.write(Record::Cooldown {
            key: key.to_owned(),
            until,
        })
    }

    fn cooldown(&self, key: &str) -> BoxFuture<'_, Result<Option<Timestamp>, BusError>> {
        let result = check_key(key).map(|()| {
            let now = Timestamp::now();
            self.state()
                .cooldowns
                .get(key)
                .copied()
                .filter(|t| *t > now)
        });
        Box::pin(async move { result })
    }

    fn record_run(&self, key: &str, at: Timestamp) -> BoxFuture<'_, Result<(), BusError>> {
        if let Err(e) = check_key(key) {
            return Box::pin(async move { Err(e) });
        }
        self.write(Record::RunAt {
            key: key.to_owned(),
            at,
        })
    }

    fn runs_since(&self, key: &str, since: Timestamp) -> BoxFuture<'_, Result<u32, BusError>> {
        let result = check_key(key).map(|()| {
            self.state().runs_at.get(key).map_or(0, |times| {
                times.iter().filter(|t| **t >= since).count() as u32
            })
        });
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many concurrent writers while the log compacts every few records: after a reopen every
    /// recorded run is counted exactly once, and each key's last cooldown is the one kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_under_concurrent_writes_neither_loses_nor_doubles_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileStateStore::open_compacting_at(dir.path(), 512).unwrap());
        let since = Timestamp::now() - jiff::SignedDuration::from_hours(1);
        let far = Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    store.record_run("ns/dep", Timestamp::now()).await.unwrap();
                    let until = far + jiff::SignedDuration::from_secs(i);
                    store
                        .set_cooldown(&format!("key-{t}"), until)
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(store.runs_since("ns/dep", since).await.unwrap(), 400);
        store.close().await;
        drop(store);
        let store = FileStateStore::open(dir.path()).unwrap();
        assert_eq!(store.runs_since("ns/dep", since).await.unwrap(), 400);
        for t in 0..8 {
            assert_eq!(
                store.cooldown(&format!("key-{t}")).await.unwrap(),
                Some(far + jiff::SignedDuration::from_secs(49))
            );
        }
    }
}
