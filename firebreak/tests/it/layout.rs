//! The code layout file (`firebreak/layout/firebreak.order`, written by `scripts/order-file`,
//! used by `build.rs` in release builds): the functions `serve` runs at start and per alert,
//! hottest first, so the linker puts them together.

use std::collections::HashSet;
use std::path::Path;

#[test]
fn the_order_file_lists_the_serving_path_once_each_hottest_first() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("layout/firebreak.order");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/order-file writes it)", path.display()));
    let names: Vec<&str> = text.lines().collect();
    assert!(
        names.len() >= 1000,
        "{} functions: a serve's start and alerts run thousands",
        names.len()
    );
    let mut seen = HashSet::new();
    for name in &names {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_$.".contains(&b)),
            "not a symbol name: {name:?}"
        );
        assert!(seen.insert(*name), "listed twice: {name}");
    }
    // Rust's mangling spells a crate as its name's length, then the name.
    for krate in [
        "firebreak_ingest",
        "firebreak_event",
        "firebreak_bus",
        "firebreak_dispatch",
        "firebreak_runtime",
        "firebreak_audit",
    ] {
        let mangled = format!("{}{krate}", krate.len());
        assert!(
            names.iter().any(|n| n.contains(&mangled)),
            "no function of {krate} (the per-alert path) listed"
        );
    }
    // The audit chain's hash is the most run function per alert (under callgrind, which counts
    // sha2's portable code): it comes first. Start-up code, run once, is listed too: what it
    // touches is what an idle server keeps mapped.
    let hash = names
        .iter()
        .position(|n| n.contains("sha25611compress256"))
        .expect("sha2's compress256 is listed");
    assert!(hash < 10, "the chain's hash is listed at {hash}, not first");
    let load = names
        .iter()
        .position(|n| n.contains("9firebreak6config6Config4load"))
        .expect("the configuration's loading, at start, is listed");
    assert!(
        load > hash,
        "start-up code ({load}) before the hash ({hash})"
    );
}
