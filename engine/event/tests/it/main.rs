//! Integration tests of the event decoders against a real Alertmanager 0.25
//! (`prometheus-alertmanager`), spawned on free loopback ports and killed on drop.

mod live_alertmanager;
