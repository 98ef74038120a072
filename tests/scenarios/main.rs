//! The mission's scenarios end to end, driven as a user would: the real `firebreak` binary, the
//! real Prometheus, Alertmanager, nats-server and kubectl, kubesim in process. The harness is
//! this crate's library.

use firebreak_tests as harness;

mod scenario1;
mod scenario2;
mod scenario3;
