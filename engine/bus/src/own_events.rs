//! Events a replica published itself, kept until its own consumer is handed them, so that
//! delivery does not decode again from JSON what publishing just encoded (with JetStream that
//! decode was about a twelfth of an alert's instructions). Start at [`OwnEvents`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use firebreak_event::Event;

/// Most payload bytes kept. With one replica an event is delivered back within milliseconds of
/// its publish; with several, most go to the others and leave here by this bound or by age.
pub(crate) const OWN_EVENTS_BYTES: usize = 2 * 1024 * 1024;

/// Oldest event kept.
pub(crate) const OWN_EVENTS_AGE: Duration = Duration::from_secs(30);

/// Most publishes remembered in order, handed out or not (what bounds the bookkeeping behind
/// an event that is never delivered here).
pub(crate) const OWN_EVENTS_COUNT: usize = 16 * 1024;

/// The events this process published, by id, with the payload each went out as. A delivery
/// is taken to be one of them only when its payload is the same bytes, so whatever a message
/// holds is what its consumer gets: a later publish of the same id by another process, or a
/// message changed on the way, is decoded as usual.
#[derive(Default)]
pub(crate) struct OwnEvents {
    inner: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    by_id: HashMap<String, Entry>,
    /// Publish order: (serial, when, id). An entry whose serial is no longer the id's in
    /// `by_id` was taken (or replaced) already.
    order: VecDeque<(u64, Instant, String)>,
    bytes: usize,
    serial: u64,
}

struct Entry {
    serial: u64,
    payload: Bytes,
    event: Arc<Event>,
}

impl OwnEvents {
    /// Keeps `event`, published as `payload`, then drops the oldest beyond the bounds.
    pub(crate) fn keep(&self, event: Arc<Event>, payload: Bytes) {
        self.keep_at(event, payload, Instant::now());
    }

    fn keep_at(&self, event: Arc<Event>, payload: Bytes, now: Instant) {
        let mut kept = self.inner.lock().expect("own events lock");
        let kept = &mut *kept;
        kept.serial += 1;
        let serial = kept.serial;
        kept.bytes += payload.len();
        kept.order.push_back((serial, now, event.id.clone()));
        if let Some(replaced) = kept.by_id.insert(
            event.id.clone(),
            Entry {
                serial,
                payload,
                event,
            },
        ) {
            kept.bytes -= replaced.payload.len();
        }
        while let Some((serial, at, id)) = kept.order.front() {
            let current = kept.by_id.get(id).is_some_and(|e| e.serial == *serial);
            if current
                && kept.bytes <= OWN_EVENTS_BYTES
                && kept.order.len() <= OWN_EVENTS_COUNT
                && now.duration_since(*at) <= OWN_EVENTS_AGE
            {
                break;
            }
            if current && let Some(entry) = kept.by_id.remove(id) {
                kept.bytes -= entry.payload.len();
            }
            kept.order.pop_front();
        }
    }

    /// The event published with `id` as exactly `payload`, if this process kept it; it is
    /// handed out once. A delivery under its id with other bytes means the stream kept
    /// another message under that id and dropped this one: it is forgotten.
    pub(crate) fn take(&self, id: &str, payload: &[u8]) -> Option<Arc<Event>> {
        let mut kept = self.inner.lock().expect("own events lock");
        let entry = kept.by_id.remove(id)?;
        kept.bytes -= entry.payload.len();
        (entry.payload == payload).then_some(entry.event)
    }

    /// Forgets the events of a publish that failed.
    pub(crate) fn forget<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut kept = self.inner.lock().expect("own events lock");
        for id in ids {
            if let Some(entry) = kept.by_id.remove(id) {
                kept.bytes -= entry.payload.len();
            }
        }
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize, usize) {
        let kept = self.inner.lock().expect("own events lock");
        (kept.by_id.len(), kept.order.len(), kept.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Arc<Event> {
        let mut event = firebreak_event::manual::trigger("r", serde_json::Map::new(), "a", false);
        event.id = id.to_owned();
        Arc::new(event)
    }

    fn payload(e: &Event) -> Bytes {
        Bytes::from(serde_json::to_vec(e).unwrap())
    }

    #[test]
    fn a_kept_event_is_handed_out_once_and_only_for_its_own_bytes() {
        let own = OwnEvents::default();
        let e = event("e1");
        own.keep(e.clone(), payload(&e));
        assert!(own.take("e2", &payload(&e)).is_none(), "another id");
        let taken = own.take("e1", &payload(&e)).expect("its own bytes");
        assert!(Arc::ptr_eq(&taken, &e));
        assert!(own.take("e1", &payload(&e)).is_none(), "handed out once");
        assert_eq!(own.held().2, 0);

        // Another message under its id: the stream kept that one, this one is forgotten.
        own.keep(e.clone(), payload(&e));
        let mut other = payload(&e).to_vec();
        other.push(b' ');
        assert!(own.take("e1", &other).is_none(), "other bytes");
        assert!(own.take("e1", &payload(&e)).is_none(), "forgotten");
        assert_eq!(own.held().2, 0);
    }

    #[test]
    fn a_failed_publish_is_forgotten() {
        let own = OwnEvents::default();
        let (a, b) = (event("a"), event("b"));
        own.keep(a.clone(), payload(&a));
        own.keep(b.clone(), payload(&b));
        own.forget(["a", "b"]);
        assert!(own.take("a", &payload(&a)).is_none());
        assert_eq!(own.held().2, 0);
    }

    #[test]
    fn what_is_kept_stays_within_its_bytes_and_age() {
        let own = OwnEvents::default();
        let start = Instant::now();
        let big = Bytes::from(vec![b'x'; 64 * 1024]);
        for i in 0..100 {
            own.keep_at(event(&format!("e{i}")), big.clone(), start);
        }
        let (entries, order, bytes) = own.held();
        assert!(bytes <= OWN_EVENTS_BYTES, "{bytes}");
        assert_eq!(entries, OWN_EVENTS_BYTES / big.len());
        assert_eq!(order, entries);
        // The newest stay, the oldest went.
        assert!(own.take("e99", &big).is_some());
        assert!(own.take("e0", &big).is_none());
        // Past the age, the next keep drops the rest.
        let later = start + OWN_EVENTS_AGE + Duration::from_secs(1);
        let e = event("late");
        own.keep_at(e.clone(), payload(&e), later);
        assert_eq!(own.held().0, 1);
        assert_eq!(own.held().1, 1);
    }

    #[test]
    fn events_never_delivered_here_hold_back_no_more_than_the_count() {
        let own = OwnEvents::default();
        let stuck = event("stuck");
        own.keep(stuck.clone(), payload(&stuck));
        for i in 0..OWN_EVENTS_COUNT + 10 {
            let e = event(&format!("e{i}"));
            own.keep(e.clone(), payload(&e));
            assert!(own.take(&e.id, &payload(&e)).is_some());
        }
        let (entries, order, _) = own.held();
        assert!(order <= OWN_EVENTS_COUNT + 1, "{order}");
        assert_eq!(entries, 0, "the stuck one went with the count");
    }

    #[test]
    fn taken_events_leave_the_order_as_later_ones_come() {
        let own = OwnEvents::default();
        for i in 0..1000 {
            let e = event(&format!("e{i}"));
            own.keep(e.clone(), payload(&e));
            assert!(own.take(&e.id, &payload(&e)).is_some());
        }
        // Each keep first drops what was taken before it: one entry left, the last one's.
        assert_eq!(own.held(), (0, 1, 0));
    }
}
