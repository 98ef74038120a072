//! `firebreak check DIR`: validate every manifest and compile every script, printing each
//! problem as `file:line:col: message`. Exits non-zero when anything is wrong.

use std::path::Path;

use anyhow::{Result, bail};

use crate::dispatch::Loaded;

pub fn check(dir: &Path, teams: Option<&Path>) -> Result<()> {
    match Loaded::load(dir, teams) {
        Ok(loaded) => {
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
