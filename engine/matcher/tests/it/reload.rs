//! The hot-reload change detector and "a broken edit is refused".

use std::time::{Duration, SystemTime};

use firebreak_matcher::{RunbookSet, fingerprint_dir};

use crate::folder;

const GOOD: &str = "name: a\nteam: t\ndescription: d\nnamespaces: [x]\n";

#[test]
fn fingerprint_changes_with_content_names_and_mtime() {
    let dir = folder(&[("a.yaml", GOOD), ("a.rhai", "1")]);
    let first = fingerprint_dir(dir.path()).unwrap();
    assert_eq!(first, fingerprint_dir(dir.path()).unwrap());

    // Same size, new mtime: an in-place edit of one character.
    let script = dir.path().join("a.rhai");
    std::fs::write(&script, "2").unwrap();
    let file = std::fs::File::options().write(true).open(&script).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let edited = fingerprint_dir(dir.path()).unwrap();
    assert_ne!(first, edited);

    std::fs::write(dir.path().join("b.yaml"), GOOD).unwrap();
    let added = fingerprint_dir(dir.path()).unwrap();
    assert_ne!(edited, added);

    assert!(fingerprint_dir(&dir.path().join("missing")).is_err());
}

/// A broken edit fails to load, with a diagnostic naming the file and the line; the caller
/// keeps serving the set it had (checked where the reload is: `firebreak_dispatch::runbooks`
/// and `firebreak/tests/it/runbooks.rs`). Mended, the folder loads again.
#[test]
fn a_broken_edit_fails_to_load_with_a_diagnostic_naming_its_place() {
    let dir = folder(&[("a.yaml", GOOD), ("a.rhai", "1")]);
    RunbookSet::load_dir(dir.path()).unwrap();
    std::fs::write(dir.path().join("a.yaml"), "name: a\nteam: t\n  oops: [\n").unwrap();
    let diags = RunbookSet::load_dir(dir.path()).unwrap_err();
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(diags[0].file.ends_with("a.yaml"), "{diags:?}");
    // The third line is where the mapping breaks (or the end of the text after it).
    assert!((3..=4).contains(&diags[0].line), "{diags:?}");
    assert!(!diags[0].message.is_empty(), "{diags:?}");
    std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
    let mended = RunbookSet::load_dir(dir.path()).unwrap();
    assert!(mended.get("a").is_some());
}
