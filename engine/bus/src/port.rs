//! A loopback port for a child server (nats-server, Prometheus, Alertmanager, `firebreak serve`)
//! that nothing else takes between the moment it is chosen and the moment the child binds it.
//!
//! Binding port 0 and closing the socket hands out a port from the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`, 32768–60999 by default). Every outgoing
//! connection on the machine and every other port-0 bind draws from that same range, so in the
//! seconds before the child binds, the port can be taken: a test suite that starts Alertmanager
//! and Prometheus before `firebreak serve`, or restarts a NATS node on its port, then fails with
//! "address already in use" now and then.
//!
//! [`free_loopback_port`] chooses below the ephemeral range instead, where the kernel hands out
//! nothing by itself, and holds an advisory lock on `<tmp>/firebreak-ports-<uid>/<port>.lock`
//! for the rest of the process's life, so that two processes of one user calling it (two tests
//! running in parallel) never choose the same port. A port some other program already listens
//! on is skipped. Without room below the ephemeral range, or without a lock directory, it falls
//! back to a port-0 bind.

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Mutex;

/// The lowest port chosen: above the registered ports most local services use.
const LOWEST: u16 = 10_000;

/// Locks held until the process exits: a chosen port stays this process's.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// A loopback port no other process is listening on, that the kernel will not hand out as an
/// ephemeral port, and that no other caller of this function (in any process of the same user)
/// gets while this process lives.
pub fn free_loopback_port() -> std::io::Result<u16> {
    match below_ephemeral().and_then(|range| locked(range).ok().flatten()) {
        Some(port) => Ok(port),
        // No room below the ephemeral range, or no lock directory: what binding 0 gives.
        None => ephemeral(),
    }
}

/// A port of `range` claimed for the rest of the process, starting at a random one.
fn locked(range: Range<u16>) -> std::io::Result<Option<u16>> {
    let dir = lock_dir()?;
    std::fs::create_dir_all(&dir)?;
    let span = u64::from(range.end - range.start);
    let start = RandomState::new().hash_one(std::process::id()) % span;
    for i in 0..span {
        let port = range.start + ((start + i) % span) as u16;
        if let Some(lock) = claim(&dir, port)? {
            HELD.lock().unwrap_or_else(|p| p.into_inner()).push(lock);
            return Ok(Some(port));
        }
    }
    Ok(None)
}

/// `<tmp>/firebreak-ports-<uid>`: one per user, so another user's lock files (which this one
/// may not open) are never in the way.
fn lock_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let uid = std::fs::metadata("/proc/self")?.uid();
    Ok(std::env::temp_dir().join(format!("firebreak-ports-{uid}")))
}

/// The ports from [`LOWEST`] up to the ephemeral range's start; `None` if that is too few.
fn below_ephemeral() -> Option<Range<u16>> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let low: u16 = text.split_whitespace().next()?.parse().ok()?;
    (low > LOWEST + 1_000).then_some(LOWEST..low)
}

/// The lock for `port` if no one holds it and the port is free to bind now.
fn claim(dir: &std::path::Path, port: u16) -> std::io::Result<Option<File>> {
    let path: PathBuf = dir.join(format!("{port}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    }
    Ok(TcpListener::bind(("127.0.0.1", port))
        .is_ok()
        .then_some(file))
}

fn ephemeral() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_distinct_and_bindable() {
        let range = below_ephemeral().expect("this machine's ephemeral range starts above 11000");
        let ports: Vec<u16> = (0..20).map(|_| free_loopback_port().unwrap()).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!(range.contains(&port), "{port} not in {range:?}");
            TcpListener::bind(("127.0.0.1", port)).expect("the chosen port binds");
        }
    }

    #[test]
    fn a_port_another_process_holds_is_not_chosen_and_a_listened_port_is_skipped() {
        let dir = lock_dir().unwrap();
        let port = free_loopback_port().unwrap();
        // A second open of the lock file, as another process would make, cannot take it.
        assert!(claim(&dir, port).unwrap().is_none());
        // A port some program listens on is not handed out.
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        assert!(claim(&dir, busy_port).unwrap().is_none());
    }
}
