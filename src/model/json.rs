//! JSON text as it is stored: kept as text from the caller to PostgreSQL and back.
//!
//! Events carry their data and metadata as already-serialized JSON. Reads hand the
//! text back without parsing it (callers deserialize once, into their own type), and
//! writes check it once, before it reaches a batch, for what `jsonb` would refuse.
//!
//! [`DataMembers`] is the one way the in-memory matcher reads data: the top-level
//! string members, exactly as `jsonb` keeps them (last duplicate key wins, escapes
//! decoded, any number or depth elsewhere in the document accepted unparsed), so that
//! memory and SQL agree on every document `validate` accepts.
//!
//! Longer than most files because the checks (what `jsonb` refuses, what `serde_json`
//! could not read back) are one linear scan, kept here with their edge tests.

use std::collections::HashMap;
use std::fmt;

use serde_json::value::RawValue;

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

    /// Checks that PostgreSQL's `jsonb` will take this text and that what it gives
    /// back can be read: valid JSON, no `\u0000`, no unpaired surrogate escapes, no
    /// number outside `numeric`'s range (all refused by `jsonb`); nesting at most
    /// [`MAX_DEPTH`] deep and no number that `serde_json` cannot read as `f64` in the
    /// form `jsonb` gives it back (plain decimal digits), both of which would make
    /// `data::<serde_json::Value>()` fail on the stored event forever.
    pub(crate) fn validate(&self, what: &str) -> Result<()> {
        // `IgnoredAny` checks the syntax without parsing numbers or recursing.
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&self.0) {
            return Err(Error::invalid(format!("{what} is not valid JSON: {e}")));
        }
        scan(&self.0).map_err(|problem| Error::invalid(format!("{what} {problem}")))
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

/// Deepest nesting of arrays and objects accepted: the deepest `serde_json` reads
/// (its recursion limit; a unit test holds the two together).
pub(crate) const MAX_DEPTH: usize = 127;

/// Scans valid JSON text for what `jsonb` refuses or could not be read back:
/// `\u0000`, unpaired surrogate escapes, numbers outside `numeric`'s or `f64`'s range,
/// and nesting deeper than [`MAX_DEPTH`]. In valid JSON, backslashes occur only inside
/// strings and quotes toggle strings, so one linear pass is exact.
fn scan(text: &str) -> std::result::Result<(), String> {
    let at = |problem: &str, i: usize| format!("{problem} (at byte {i})");
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
                        return Err(at(
                            "is nested deeper than 127 levels, which serde_json cannot read back",
                            i,
                        ));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                b'-' | b'0'..=b'9' => {
                    i = check_number(bytes, i).map_err(|problem| at(problem, i))?;
                    continue;
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        if byte != b'\\' {
            if pending_high_surrogate {
                return Err(at(UNPAIRED, i));
            }
            in_string = byte != b'"';
            i += 1;
            continue;
        }
        if bytes.get(i + 1) != Some(&b'u') {
            if pending_high_surrogate {
                return Err(at(UNPAIRED, i));
            }
            i += 2;
            continue;
        }
        let hex = text
            .get(i + 2..i + 6)
            .and_then(|h| u16::from_str_radix(h, 16).ok())
            .ok_or_else(|| at("contains a malformed \\u escape", i))?;
        match hex {
            0 => {
                return Err(at(
                    "contains \\u0000, which PostgreSQL jsonb cannot store",
                    i,
                ))
            }
            0xD800..=0xDBFF if !pending_high_surrogate => pending_high_surrogate = true,
            0xDC00..=0xDFFF if pending_high_surrogate => pending_high_surrogate = false,
            _ if pending_high_surrogate => return Err(at(UNPAIRED, i)),
            0xD800..=0xDFFF => return Err(at(UNPAIRED, i)),
            _ => {}
        }
        i += 6;
    }
    if pending_high_surrogate {
        return Err(at(UNPAIRED, bytes.len()));
    }
    Ok(())
}

/// `numeric`'s limits, which `jsonb` numbers share: at most 16383 digits after the
/// decimal point (display scale), the most significant digit at most 10^131071, and a
/// written exponent below `INT_MAX / 2` in magnitude.
const NUMERIC_MAX_SCALE: i64 = 16_383;
const NUMERIC_MAX_MAGNITUDE: i64 = 131_071;
const NUMERIC_MAX_EXPONENT: i64 = (i32::MAX / 2) as i64;

/// Checks the number starting at `start` (valid JSON syntax) against `numeric`'s
/// range, computed as PostgreSQL's `numeric_in` does; returns the index after it.
fn check_number(bytes: &[u8], start: usize) -> std::result::Result<usize, &'static str> {
    const OUT_OF_RANGE: &str = "contains a number outside PostgreSQL numeric's range";
    let digits = |from: usize| {
        let end = bytes[from..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(bytes.len(), |n| from + n);
        (from, end)
    };
    let mut i = start + usize::from(bytes[start] == b'-');
    let (int_start, int_end) = digits(i);
    i = int_end;
    let (mut frac_start, mut frac_end) = (i, i);
    if bytes.get(i) == Some(&b'.') {
        (frac_start, frac_end) = digits(i + 1);
        i = frac_end;
    }
    let mut exponent: i64 = 0;
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        let negative = bytes.get(i) == Some(&b'-');
        if matches!(bytes.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let (exp_start, exp_end) = digits(i);
        for &d in &bytes[exp_start..exp_end] {
            exponent = exponent
                .saturating_mul(10)
                .saturating_add(i64::from(d - b'0'));
        }
        if negative {
            exponent = -exponent;
        }
        i = exp_end;
    }
    if exponent.abs() >= NUMERIC_MAX_EXPONENT {
        return Err(OUT_OF_RANGE);
    }
    let frac_len = (frac_end - frac_start) as i64;
    if (frac_len - exponent).max(0) > NUMERIC_MAX_SCALE {
        return Err(OUT_OF_RANGE);
    }
    // The decimal exponent of the most significant non-zero digit (none for zero).
    let int_len = (int_end - int_start) as i64;
    let magnitude = match bytes[int_start..int_end].iter().position(|&d| d != b'0') {
        Some(first) => Some(int_len - 1 - first as i64),
        None => bytes[frac_start..frac_end]
            .iter()
            .position(|&d| d != b'0')
            .map(|first| -(first as i64) - 1),
    };
    if magnitude.is_some_and(|m| m + exponent > NUMERIC_MAX_MAGNITUDE) {
        return Err(OUT_OF_RANGE);
    }
    // `f64::MAX` is below 10^309: a leading digit at 10^309 or above is infinite, one
    // at 10^307 or below finite; between, serde_json decides, on the text as given and
    // on the text `jsonb` gives back (which it may read differently).
    const NOT_F64: &str = "contains a number too large for f64, which serde_json cannot read back";
    match magnitude.map(|m| m + exponent) {
        Some(m) if m > F64_MAX_MAGNITUDE => return Err(NOT_F64),
        Some(m) if m >= F64_MAX_MAGNITUDE - 1 => {
            let negative = bytes[start] == b'-';
            let stored = stored_form(
                negative,
                &bytes[int_start..int_end],
                &bytes[frac_start..frac_end],
                exponent,
            );
            let given = std::str::from_utf8(&bytes[start..i]).unwrap_or_default();
            for text in [given, stored.as_str()] {
                if serde_json::from_str::<serde_json::Number>(text).is_err() {
                    return Err(NOT_F64);
                }
            }
        }
        _ => {}
    }
    Ok(i)
}

/// The decimal exponent of `f64::MAX`'s leading digit.
const F64_MAX_MAGNITUDE: i64 = 308;

/// A number as `jsonb` gives it back (`numeric`'s output): plain decimal digits, the
/// integer part without leading zeros (`0` when empty), then as many fraction digits
/// as the input had after the point, less its exponent. Only called for magnitudes
/// near `f64::MAX` (the text is a few hundred bytes).
fn stored_form(negative: bool, int: &[u8], frac: &[u8], exponent: i64) -> String {
    let digits: Vec<u8> = int.iter().chain(frac).copied().collect();
    let point = int.len() as i64 + exponent; // where the point falls in `digits`
    let mut text = String::from(if negative { "-" } else { "" });
    let int_part: String = (0..point.max(0))
        .map(|k| char::from(*digits.get(k as usize).unwrap_or(&b'0')))
        .skip_while(|&c| c == '0')
        .collect();
    text.push_str(if int_part.is_empty() { "0" } else { &int_part });
    let scale = (frac.len() as i64 - exponent).max(0);
    if scale > 0 {
        text.push('.');
        text.extend((point..point + scale).map(|k| {
            let digit = usize::try_from(k).ok().and_then(|k| digits.get(k));
            char::from(*digit.unwrap_or(&b'0'))
        }));
    }
    text
}

/// The top-level string members of an event's data: what payload predicates
/// (`key` = string `value`) see, with `jsonb`'s meaning. Data that is not an object
/// has none.
#[derive(Debug, Default)]
pub(crate) struct DataMembers(HashMap<String, Option<String>>);

impl DataMembers {
    /// Reads the members of validated JSON text; other members' values stay unparsed,
    /// so numbers beyond `f64` and any depth are fine.
    pub(crate) fn of(text: &JsonText) -> Self {
        #[cfg(test)]
        tests::PARSES.with(|n| n.set(n.get() + 1));
        // A later duplicate key replaces an earlier one, as in `jsonb`.
        match serde_json::from_str::<Members>(text.as_str()) {
            Ok(Members(members)) => DataMembers(members),
            Err(_) => DataMembers::default(), // not an object
        }
    }

    /// Whether member `key` is the JSON string `value`.
    pub(crate) fn has(&self, key: &str, value: &str) -> bool {
        matches!(self.0.get(key), Some(Some(v)) if v == value)
    }
}

/// Deserializes an object into key → string value (`None` for any other value).
struct Members(HashMap<String, Option<String>>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut members = HashMap::new();
                while let Some((key, raw)) = map.next_entry::<String, &'de RawValue>()? {
                    let value = raw
                        .get()
                        .starts_with('"')
                        .then(|| serde_json::from_str::<String>(raw.get()).ok())
                        .flatten();
                    members.insert(key, value);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// How many times this thread parsed data members (the planner's budget test).
        pub(crate) static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

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
        // The limit is serde_json's: what is accepted, it reads back.
        assert!(serde_json::from_str::<serde_json::Value>(&deep(MAX_DEPTH)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&deep(MAX_DEPTH + 1)).is_err());
        assert!(check(r#"{"a":"[[[[ \" {{"}"#).is_ok());
    }

    #[test]
    fn refuses_numbers_outside_numeric_like_postgresql() {
        // Edges checked against PostgreSQL 15's `'...'::jsonb`.
        for ok in [
            "1e-16383",
            "0.1e-16382",
            "0e1073741822",
            "-0",
            "1E+5",
            "0.000",
            "-12.5e-3",
        ] {
            assert!(check(&format!("[{ok}]")).is_ok(), "{ok}");
        }
        for bad in [
            "1e131072",
            "1e-16384",
            "0e-16384",
            "0.5e-16383",
            "0e1073741823",
            "10e-16384",
            "1e99999999999999999999999",
            "-1e131072",
            // within numeric's range, beyond f64's
            "1e131071",
            "9.9e131071",
            "123456789012345678901234567890e131040",
            "1e400",
        ] {
            assert!(check(&format!("{{\"a\":[{bad}]}}")).is_err(), "{bad}");
        }
        let long = format!("1{}", "0".repeat(131_072));
        assert!(check(&long).is_err());
        assert!(check(&long[..310]).is_err()); // 1e309
        assert!(check(&long[..309]).is_ok()); // 1e308
    }

    #[test]
    fn numbers_near_f64s_limits_are_accepted_only_when_their_stored_form_reads_back() {
        let reads_back = |text: &str| serde_json::from_str::<serde_json::Number>(text).is_ok();
        for (given, stored) in [
            ("1e308", format!("1{}", "0".repeat(308))),
            ("-1.5e308", format!("-15{}", "0".repeat(307))),
            (
                "1.7976931348623157e308",
                format!("17976931348623157{}", "0".repeat(292)),
            ),
            (
                "17.976931348623157e307",
                format!("17976931348623157{}", "0".repeat(292)),
            ),
            ("1.0e308", format!("1{}", "0".repeat(308))),
            ("1.25e307", format!("125{}", "0".repeat(305))),
            ("5e-324", format!("0.{}5", "0".repeat(323))),
            (
                "1.7976931348623157e-308",
                format!("0.{}17976931348623157", "0".repeat(307)),
            ),
        ] {
            if given.contains("e-") {
                assert!(check(given).is_ok(), "{given}");
                continue;
            }
            let exponent: i64 = given.split('e').nth(1).unwrap().parse().unwrap();
            let (mantissa, negative) = match given.split('e').next().unwrap() {
                m if m.starts_with('-') => (&m[1..], true),
                m => (m, false),
            };
            let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
            let form = stored_form(negative, int.as_bytes(), frac.as_bytes(), exponent);
            assert_eq!(form, stored, "{given}");
            let expected = reads_back(given) && reads_back(&stored);
            assert_eq!(check(&format!("[{given}]")).is_ok(), expected, "{given}");
        }
        // serde_json's reading of f64::MAX's 309 digits is what decides.
        let max = format!("17976931348623157{}", "0".repeat(292));
        assert_eq!(check(&max).is_ok(), reads_back(&max));
        assert!(check("1e309").is_err() && check("-1e309").is_err());
    }

    #[test]
    fn data_members_read_top_level_strings_as_jsonb_does() {
        let members = |t: &str| DataMembers::of(&JsonText::from_text(t.to_owned()));
        let m = members(r#"{"k":"v","n":1e400,"d":[[[[1]]]],"\u006b2":"\u00e9"}"#);
        assert!(m.has("k", "v") && m.has("k2", "é") && !m.has("n", "1e400"));
        assert!(!members(r#"{"k":"v","k":1}"#).has("k", "v"));
        assert!(members(r#"{"k":1,"k":"v"}"#).has("k", "v"));
        assert!(!members(r#"[{"k":"v"}]"#).has("k", "v"));
        assert!(!members(r#""v""#).has("k", "v"));
        let deep = format!(r#"{{"k":"v","d":{}1{}}}"#, "[".repeat(500), "]".repeat(500));
        assert!(members(&deep).has("k", "v"));
    }
}
