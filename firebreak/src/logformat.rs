//! Plain log lines (a log file, a pod's log) in the exact text of tracing-subscriber's default
//! format without colours (`2026-12-05T07:51:17.826479Z  INFO target: message key=value`), for
//! less work per line.
//!
//! The default format paints every part through `nu_ansi_term` even with colours off, formats
//! the time from scratch for every line and escapes the message one character at a time;
//! under load a run's three lines cost it about 40,000 instructions per alert (callgrind,
//! `docs/BENCHMARKS.md`). Here the time's text up to the second is kept per thread, nothing is
//! painted, and text is escaped only when it holds a character that needs it. A terminal still
//! gets the default, coloured format (`telemetry::init`).

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The plain line format (see the module's doc).
pub struct PlainLine;

impl<S, N> FormatEvent<S, N> for PlainLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write_now(&mut writer)?;
        writer.write_str(match *meta.level() {
            Level::TRACE => "TRACE ",
            Level::DEBUG => "DEBUG ",
            Level::INFO => " INFO ",
            Level::WARN => " WARN ",
            Level::ERROR => "ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = Fields {
            out: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

thread_local! {
    /// The second the text below is for, and `YYYY-MM-DDTHH:MM:SS.` of it.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-12-05T07:51:17.826479Z ` (UTC, microseconds, then a space), as the default format's
/// `SystemTime` timer writes it.
fn write_now(out: &mut Writer<'_>) -> fmt::Result {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, micros) = (now.as_secs(), now.subsec_micros());
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != secs {
            text.clear();
            let at = i64::try_from(secs)
                .ok()
                .and_then(|s| jiff::Timestamp::from_second(s).ok())
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            let _ = write!(text, "{}.", at.strftime("%Y-%m-%dT%H:%M:%S"));
            *second = secs;
        }
        out.write_str(text)
    })?;
    let mut digits = *b"000000Z ";
    let mut n = micros;
    for d in digits[..6].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.write_str(std::str::from_utf8(&digits).expect("ASCII"))
}

/// An event's fields as the default format's visitor writes them, in the order recorded and
/// separated by spaces: the message without its name (escaped), every other field as
/// `name=value` with the value's `Debug` (a `%` field's `Display`).
struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn pad(&mut self) {
        if std::mem::take(&mut self.first) {
            return;
        }
        self.result = self.out.write_char(' ');
    }

    fn named(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.pad();
        if self.result.is_ok() {
            // The name as it is, then only the value through the formatting machinery.
            self.result = self
                .out
                .write_str(name)
                .and_then(|()| self.out.write_char('='))
                .and_then(|()| write!(self.out, "{value:?}"));
        }
    }

    /// Text that may come from outside (a message, an error), with the terminal's control
    /// characters escaped as the default format escapes them.
    fn escaped(&mut self, text: fmt::Arguments<'_>) {
        self.pad();
        if self.result.is_ok() {
            self.result = Escaping(&mut *self.out).write_fmt(text);
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if field.name() == "message" {
            self.escaped(format_args!("{value}"));
        } else {
            self.named(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() {
            return;
        }
        match value.source() {
            None if field.name() == "message" => self.escaped(format_args!("{value}")),
            None => self.named(field, &format_args!("{}", EscapedDisplay(value))),
            Some(source) => {
                // As the default: the error, then its sources as `name.sources=[..]` (with the
                // raw field name).
                let sources = format_args!(
                    "{} {}.sources={}",
                    EscapedDisplay(value),
                    field.name(),
                    SourceList(source)
                );
                if field.name() == "message" {
                    self.escaped(sources);
                } else {
                    self.named(field, &sources);
                }
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        if field.name() == "message" {
            self.escaped(format_args!("{value:?}"));
        } else {
            self.named(field, value);
        }
    }
}

/// Writes text through, escaping what a terminal would act on: ESC, BEL, BS, FF, DEL and the
/// C1 controls (as tracing-subscriber's own escaping does).
struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // C1 controls are U+0080..=U+009F: 0xC2 then 0x80..=0x9F in UTF-8.
        let clean = s
            .bytes()
            .all(|b| !matches!(b, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f | 0xc2));
        if clean {
            return self.0.write_str(s);
        }
        for ch in s.chars() {
            match ch {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                ch if ('\u{80}'..='\u{9f}').contains(&ch) => {
                    write!(self.0, "\\u{{{:x}}}", ch as u32)?
                }
                ch => self.0.write_char(ch)?,
            }
        }
        Ok(())
    }
}

/// A value's `Display`, escaped.
struct EscapedDisplay<'a>(&'a dyn fmt::Display);

impl fmt::Display for EscapedDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaping(f), "{}", self.0)
    }
}

/// An error and its own sources as a list (`[outer, inner]`), each escaped.
struct SourceList<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for SourceList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut current = Some(self.0);
        while let Some(error) = current {
            list.entry(&format_args!("{}", EscapedDisplay(error)));
            current = error.source();
        }
        list.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Failed(&'static str, Option<Box<Failed>>);

    impl fmt::Display for Failed {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Failed {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    /// Every kind of line the engine writes: levels, `%`/`?`/plain fields, a raw identifier,
    /// errors with and without sources, text a terminal would act on, spans with fields.
    fn log_everything() {
        let chain = Failed(
            "connect failed",
            Some(Box::new(Failed("refused\x1b[31m", None))),
        );
        let lone = Failed("bad \x07 bell", None);
        tracing::info!(run_id = %"01a2452f", runbook = "bench-probe", steps = 1, "run finished");
        tracing::warn!(error = %lone, "cannot read \x1b[2J the file");
        tracing::error!(error = &chain as &dyn std::error::Error, "gave up");
        tracing::error!(error = &lone as &dyn std::error::Error, "no source");
        tracing::debug!(r#type = "firing", ok = true, ratio = 0.25, list = ?vec!["a", "b"], "d");
        tracing::trace!("only \u{9b} a message, with a C1 control");
        tracing::info!(message = "a message field", extra = -3);
        tracing::info!(detail = "a line without message");
        let outer = tracing::info_span!("serve", port = 8080);
        let _outer = outer.enter();
        let inner = tracing::info_span!("run", runbook = "scenario-1");
        let _inner = inner.enter();
        let bare = tracing::info_span!("bare");
        let _bare = bare.enter();
        tracing::info!(ns = "team-a", "inside spans");
    }

    fn lines_of(plain: bool) -> String {
        let out = Lines::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(out.clone());
        let layer = if plain {
            layer.event_format(PlainLine).boxed()
        } else {
            layer.boxed()
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, log_everything);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn plain_lines_are_the_default_formats_text() {
        let (ours, theirs) = (lines_of(true), lines_of(false));
        let ours: Vec<&str> = ours.lines().collect();
        let theirs: Vec<&str> = theirs.lines().collect();
        assert_eq!(ours.len(), 9, "{ours:#?}");
        assert_eq!(ours.len(), theirs.len(), "{ours:#?}\n{theirs:#?}");
        for (a, b) in ours.iter().zip(&theirs) {
            // The time (28 bytes with its space) differs; its shape must not.
            let (time, rest) = a.split_at(28);
            assert_eq!(rest, &b[28..], "\n ours: {a}\ntheirs: {b}");
            let shape: String = time
                .chars()
                .map(|c| if c.is_ascii_digit() { '0' } else { c })
                .collect();
            assert_eq!(shape, "0000-00-00T00:00:00.000000Z ", "{a}");
            assert_eq!(&time[..17], &b[..17], "the same minute: {a} / {b}");
        }
        assert!(theirs.iter().any(|l| l.contains("\\x1b[2J")), "{theirs:#?}");
    }

    #[test]
    fn the_time_is_now_in_utc() {
        let mut text = String::new();
        write_now(&mut Writer::new(&mut text)).unwrap();
        let parsed: jiff::Timestamp = text.trim_end().parse().unwrap();
        let drift = jiff::Timestamp::now().duration_since(parsed);
        assert!(drift.abs() < jiff::SignedDuration::from_secs(2), "{text}");
        // The second's text is cached per thread: a second line is as right as the first.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        text.clear();
        write_now(&mut Writer::new(&mut text)).unwrap();
        let again: jiff::Timestamp = text.trim_end().parse().unwrap();
        assert!(again > parsed, "{text}");
    }
}
