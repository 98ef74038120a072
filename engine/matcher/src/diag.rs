//! [`Diagnostic`]: one problem in one file, displayed as `file:line:col: message`, and the
//! hardened YAML reader every file of this crate goes through ([`parse_yaml`]).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_saphyr::{Location, Spanned};

/// Largest YAML file (manifest or teams file) we read, in bytes.
pub const MAX_YAML_BYTES: usize = 256 * 1024;

/// One problem found while loading, with a 1-based position in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// What is wrong, lowercase, without the position.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl std::error::Error for Diagnostic {}

impl Diagnostic {
    /// A diagnostic at a line and column.
    pub fn new(file: &Path, line: u32, column: u32, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }

    /// A diagnostic at a YAML location (1:1 when the location is unknown).
    pub(crate) fn at(file: &Path, location: Location, message: impl Into<String>) -> Self {
        let (line, column) = position(location);
        Diagnostic::new(file, line, column, message)
    }

    /// A diagnostic at the node a [`Spanned`] value came from.
    pub(crate) fn spanned<T>(file: &Path, node: &Spanned<T>, message: impl Into<String>) -> Self {
        Diagnostic::at(file, node.referenced, message)
    }

    /// A diagnostic `offset` characters into a single-line scalar (e.g. a regex inside a
    /// matcher string); skips the opening quote when the scalar was quoted.
    pub(crate) fn inside(
        file: &Path,
        node: &Spanned<String>,
        offset: usize,
        message: String,
    ) -> Self {
        let (line, column) = position(node.referenced);
        let quoted = node.referenced.span().len() > node.value.chars().count() as u64;
        let column = column + u32::from(quoted) + u32::try_from(offset).unwrap_or(0);
        Diagnostic::new(file, line, column, message)
    }
}

fn position(location: Location) -> (u32, u32) {
    let line = u32::try_from(location.line()).unwrap_or(u32::MAX).max(1);
    let column = u32::try_from(location.column()).unwrap_or(u32::MAX).max(1);
    (line, column)
}

/// Parses YAML with the budgets user-submitted files get: depth, node count, anchors and
/// alias replays bounded (no alias bombs), one document, duplicate keys refused.
/// The caller has already capped the size at [`MAX_YAML_BYTES`].
pub(crate) fn parse_yaml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, Diagnostic> {
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = 10_000;
    alias_limits.max_replay_stack_depth = 8;
    alias_limits.max_alias_expansions_per_anchor = 64;
    let options = serde_saphyr::options! {
        with_snippet: false,
        alias_limits: alias_limits,
        budget: serde_saphyr::budget! {
            max_depth: 32,
            max_nodes: 20_000,
            max_anchors: 64,
            max_aliases: 256,
            max_documents: 1,
            max_total_scalar_bytes: MAX_YAML_BYTES,
        },
    };
    serde_saphyr::from_str_with_options(text, options).map_err(|e| yaml_diagnostic(file, &e))
}

fn yaml_diagnostic(file: &Path, error: &serde_saphyr::Error) -> Diagnostic {
    let full = error.to_string();
    match error.location() {
        Some(location) => {
            let suffix = format!(" at line {}, column {}", location.line(), location.column());
            let message = full.strip_suffix(&suffix).unwrap_or(&full);
            Diagnostic::at(file, location, message)
        }
        None => Diagnostic::new(file, 1, 1, full),
    }
}

/// Reads a YAML file, refusing files over [`MAX_YAML_BYTES`] before reading them.
pub(crate) fn read_capped(file: &Path, cap: usize) -> Result<String, Diagnostic> {
    use std::io::Read;
    let io_error = |e: std::io::Error| Diagnostic::new(file, 1, 1, format!("cannot read: {e}"));
    let handle = std::fs::File::open(file).map_err(io_error)?;
    let mut text = String::new();
    // Read one byte past the cap so an oversized file is detected without reading it all.
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    handle
        .take(limit)
        .read_to_string(&mut text)
        .map_err(io_error)?;
    if text.len() > cap {
        return Err(Diagnostic::new(
            file,
            1,
            1,
            format!("file is larger than the {cap} byte limit"),
        ));
    }
    Ok(text)
}
