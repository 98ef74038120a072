//! Integration tests of the matcher: loading real runbook folders (good and broken), matching
//! the Alertmanager 0.25 fixtures, manual triggers, teams and hot-reload detection.

mod diagnostics;
mod matching;
mod reload;
mod tenancy;

use std::path::{Path, PathBuf};

use firebreak_event::Event;
use firebreak_matcher::RunbookSet;

/// The two example runbooks (and a teams file) under `tests/data/`.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

pub fn data_set() -> RunbookSet {
    RunbookSet::load_dir(&data_dir()).unwrap_or_else(|diags| {
        panic!(
            "test runbooks must load:\n{}",
            diags.iter().map(|d| format!("{d}\n")).collect::<String>()
        )
    })
}

/// Decodes one fixture of `shared/fixtures/alertmanager/`.
pub fn fixture(name: &str) -> Vec<Event> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/alertmanager")
        .join(name);
    let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    firebreak_event::alertmanager::decode(&body).expect("fixture decodes")
}

/// A temp folder with the given files.
pub fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write test file");
    }
    dir
}
