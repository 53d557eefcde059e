//! JSON text as it is stored: kept as text from the caller to PostgreSQL and back.
//!
//! Events carry their data and metadata as already-serialized JSON. Reads hand the
//! text back without parsing it (callers deserialize once, into their own type), and
//! writes check it once, before it reaches a batch, for what `jsonb` would refuse.

use std::fmt;

use crate::error::{Error, Result};

/// Serialized JSON, validated before it is written.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct JsonText(Box<str>);

impl JsonText {
    pub(crate) fn from_value(value: &serde_json::Value) -> Self {
        // Serializing a `Value` cannot fail: its keys are strings.
        JsonText(value.to_string().into_boxed_str())
    }

    pub(crate) fn from_text(text: String) -> Self {
        JsonText(text.into_boxed_str())
    }

    pub(crate) fn empty_object() -> Self {
        JsonText("{}".into())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Checks that PostgreSQL's `jsonb` will take this text: it must be valid JSON,
    /// contain no `\u0000` and no unpaired surrogate escapes (both refused by `jsonb`).
    pub(crate) fn validate(&self, what: &str) -> Result<()> {
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&self.0) {
            return Err(Error::invalid(format!("{what} is not valid JSON: {e}")));
        }
        check_escapes(&self.0).map_err(|problem| Error::invalid(format!("{what} {problem}")))
    }

    /// Whether the text is a JSON object (metadata must be one).
    pub(crate) fn is_object(&self) -> bool {
        self.0.trim_start().starts_with('{')
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Deepest nesting of arrays and objects accepted; PostgreSQL's recursive jsonb
/// parser would otherwise hit its stack limit on absurd input.
pub(crate) const MAX_DEPTH: usize = 512;

/// Scans valid JSON text for what `jsonb` refuses: `\u0000`, unpaired surrogate
/// escapes, and nesting deeper than [`MAX_DEPTH`]. In valid JSON, backslashes occur
/// only inside strings and quotes toggle strings, so one linear pass is exact.
fn check_escapes(text: &str) -> std::result::Result<(), &'static str> {
    const UNPAIRED: &str = "contains an unpaired UTF-16 surrogate escape";
    let bytes = text.as_bytes();
    let (mut i, mut depth, mut in_string) = (0, 0usize, false);
    let mut pending_high_surrogate = false;
    while i < bytes.len() {
        let byte = bytes[i];
        if !in_string {
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err("is nested deeper than 512 levels");
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            i += 1;
            continue;
        }
        if byte != b'\\' {
            if pending_high_surrogate {
                return Err(UNPAIRED);
            }
            in_string = byte != b'"';
            i += 1;
            continue;
        }
        if bytes.get(i + 1) != Some(&b'u') {
            if pending_high_surrogate {
                return Err(UNPAIRED);
            }
            i += 2;
            continue;
        }
        let hex = text
            .get(i + 2..i + 6)
            .and_then(|h| u16::from_str_radix(h, 16).ok())
            .ok_or("contains a malformed \\u escape")?;
        match hex {
            0 => return Err("contains \\u0000, which PostgreSQL jsonb cannot store"),
            0xD800..=0xDBFF if !pending_high_surrogate => pending_high_surrogate = true,
            0xDC00..=0xDFFF if pending_high_surrogate => pending_high_surrogate = false,
            _ if pending_high_surrogate => return Err(UNPAIRED),
            0xD800..=0xDFFF => return Err(UNPAIRED),
            _ => {}
        }
        i += 6;
    }
    if pending_high_surrogate {
        return Err(UNPAIRED);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<()> {
        JsonText::from_text(text.to_owned()).validate("data")
    }

    #[test]
    fn accepts_ordinary_json_and_escaped_backslashes() {
        assert!(check(r#"{"a":"b\\u0000c","e":"\u00e9","p":"\ud83d\ude00"}"#).is_ok());
    }

    #[test]
    fn refuses_what_jsonb_refuses() {
        assert!(check(r#"{"a":"\u0000"}"#).is_err());
        assert!(check(r#"{"a":"\ud800"}"#).is_err());
        assert!(check(r#"{"a":"\udc00x"}"#).is_err());
        assert!(check(r#"{"a":"\ud800\u0041"}"#).is_err());
        assert!(check(r#"{"a":"#).is_err());
        assert!(check("").is_err());
        let deep = |n| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(check(&deep(MAX_DEPTH)).is_ok());
        assert!(check(&deep(MAX_DEPTH + 1)).is_err());
        assert!(check(r#"{"a":"[[[[ \" {{"}"#).is_ok());
    }
}
