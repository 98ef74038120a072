//! JSON text as `serde_json::to_writer` writes it (compact, its escaping, its numbers), for
//! the hot paths: each alert's event and its audit records are written as JSON several times,
//! and escaping strings one byte at a time through serde's machinery was about a tenth of the
//! instructions an alert costs (callgrind, `docs/BENCHMARKS.md`). Here a string is searched
//! eight bytes at a time for what needs escaping (almost never anything) and copied whole.
//!
//! The output is byte for byte serde_json's: the tests compare the two on random text.

use serde_json::Value;

/// serde_json's escape for each byte below 0x20 (`u`: `\u00XX`).
const CONTROL: &[u8; 32] = b"uuuuuuuubtnufruuuuuuuuuuuuuuuuuu";

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any of the eight bytes of `word` is a control character, `"` or `\`.
fn needs_escape(word: u64) -> bool {
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let below_space = word.wrapping_sub(0x20 * ONES) & !word & HIGHS;
    (below_space
        | zero_byte(word ^ (u64::from(b'"') * ONES))
        | zero_byte(word ^ (u64::from(b'\\') * ONES)))
        != 0
}

/// Writes `text` as a JSON string, quotes included.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // The bytes before `copied` are written.
    let mut copied = 0;
    let mut chunks = bytes.chunks_exact(8);
    for (i, chunk) in (&mut chunks).enumerate() {
        if needs_escape(u64::from_le_bytes(chunk.try_into().expect("eight bytes"))) {
            escape_each(out, bytes, &mut copied, i * 8, i * 8 + 8);
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        // The last few bytes, padded with spaces (nothing to escape) to a word.
        let mut word = [b' '; 8];
        word[..rest.len()].copy_from_slice(rest);
        if needs_escape(u64::from_le_bytes(word)) {
            escape_each(
                out,
                bytes,
                &mut copied,
                bytes.len() - rest.len(),
                bytes.len(),
            );
        }
    }
    out.extend_from_slice(&bytes[copied..]);
    out.push(b'"');
}

/// Escapes what needs it among `bytes[from..to]`, writing the text before each escape.
fn escape_each(out: &mut Vec<u8>, bytes: &[u8], copied: &mut usize, from: usize, to: usize) {
    for (at, &byte) in bytes.iter().enumerate().take(to).skip(from) {
        let escape = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            0..=0x1f => CONTROL[usize::from(byte)],
            _ => continue,
        };
        out.extend_from_slice(&bytes[*copied..at]);
        *copied = at + 1;
        out.push(b'\\');
        out.push(escape);
        if escape == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        }
    }
}

/// Writes `value` as `serde_json::to_writer` does (maps in their iteration order: sorted, as
/// serde_json's `Map` is without `preserve_order`).
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    write(out, value, false);
}

/// Writes `value` as [`write_value`] does, with every object's keys sorted bytewise whatever
/// order its map keeps (serde_json's `preserve_order` may be on in another crate's build): the
/// audit trail's canonical form.
pub fn write_sorted(out: &mut Vec<u8>, value: &Value) {
    write(out, value, true);
}

fn write(out: &mut Vec<u8>, value: &Value, sorted: bool) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => {
            serde_json::to_writer(&mut *out, number).expect("writing to a Vec cannot fail");
        }
        Value::String(text) => write_str(out, text),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(out, item, sorted);
            }
            out.push(b']');
        }
        Value::Object(map) if sorted => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            write_object(out, entries, sorted);
        }
        Value::Object(map) => write_object(out, map, sorted),
    }
}

fn write_object<'a>(
    out: &mut Vec<u8>,
    entries: impl IntoIterator<Item = (&'a String, &'a Value)>,
    sorted: bool,
) {
    out.push(b'{');
    for (i, (key, item)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, key);
        out.push(b':');
        write(out, item, sorted);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A xorshift stream, so a failure names its case.
    fn stream(mut state: u64) -> impl FnMut(usize) -> usize {
        move |n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        }
    }

    /// Every character class at every offset within the eight-byte words: control
    /// characters, quotes, backslashes, DEL, multi-byte UTF-8 and plain text.
    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let pieces = [
            "a",
            "Z",
            "0",
            " ",
            "\"",
            "\\",
            "/",
            "\u{0}",
            "\u{1}",
            "\u{8}",
            "\t",
            "\n",
            "\u{b}",
            "\u{c}",
            "\r",
            "\u{1b}",
            "\u{1f}",
            "\u{7f}",
            "é",
            "€",
            "𝄞",
            "plain text, longer ",
            "\u{2028}",
        ];
        let mut next = stream(0x9e37_79b9_7f4a_7c15);
        let mut escaped = 0;
        for _ in 0..50_000 {
            let text: String = (0..next(24)).map(|_| pieces[next(pieces.len())]).collect();
            let mut out = Vec::new();
            write_str(&mut out, &text);
            let expected = serde_json::to_vec(&text).unwrap();
            assert_eq!(out, expected, "{text:?}");
            escaped += usize::from(expected.len() != text.len() + 2);
        }
        assert!(escaped > 10_000, "only {escaped} strings needed escaping");
        for byte in 0u8..=0x7f {
            let text = String::from(char::from(byte));
            let mut out = Vec::new();
            write_str(&mut out, &text);
            assert_eq!(out, serde_json::to_vec(&text).unwrap(), "byte {byte:#x}");
        }
    }

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        let mut next = stream(0x2545_f491_4f6c_dd1d);
        fn build(next: &mut impl FnMut(usize) -> usize, depth: u32) -> Value {
            let keys = ["a", "B", "", "k\"ey", "é", "z\n", "labels"];
            match next(if depth == 0 { 5 } else { 7 }) {
                0 => Value::Null,
                1 => Value::Bool(next(2) == 0),
                2 => match next(4) {
                    0 => Value::from(next(1_000_000) as u64),
                    1 => Value::from(-(next(1_000) as i64)),
                    2 => Value::from(next(1_000) as f64 / 7.0),
                    _ => Value::from(1e300),
                },
                3 | 4 => Value::String(
                    (0..next(6))
                        .map(|_| keys[next(keys.len())])
                        .collect::<String>(),
                ),
                5 => Value::Array((0..next(4)).map(|_| build(next, depth - 1)).collect()),
                _ => Value::Object(
                    (0..next(5))
                        .map(|_| (keys[next(keys.len())].to_owned(), build(next, depth - 1)))
                        .collect(),
                ),
            }
        }
        for _ in 0..20_000 {
            let value = build(&mut next, 4);
            let mut out = Vec::new();
            write_value(&mut out, &value);
            assert_eq!(out, serde_json::to_vec(&value).unwrap(), "{value}");
        }
    }
}
