//! `firebreak check DIR`: validate every manifest, compile every script and check its
//! connector calls, printing each problem as `file:line:col: message`. Exits non-zero when
//! anything is wrong.

use std::path::Path;

use anyhow::{Result, bail};

use firebreak_dispatch::Loaded;

/// Checks every runbook in `dir`; scripts' connector calls are checked against every
/// connector's actions (an action that does not exist, or a wrong number of arguments, is
/// found here rather than mid-incident). Warnings are printed but do not fail the check.
pub fn check(dir: &Path, teams: Option<&Path>) -> Result<()> {
    match Loaded::load(dir, teams, &crate::serve::connector_specs()) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            for rb in loaded.set.iter() {
                let m = &rb.manifest;
                println!(
                    "ok  {:<28} team {:<14} namespaces {:<20} triggers {}",
                    m.name,
                    m.team,
                    m.namespaces.join(","),
                    m.triggers.len()
                );
            }
            println!("{} runbooks ok in {}", loaded.set.len(), dir.display());
            Ok(())
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            bail!("{} problem(s) in {}", problems.len(), dir.display())
        }
    }
}
