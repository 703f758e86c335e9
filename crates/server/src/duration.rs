//! Go's `time.ParseDuration` syntax, which etcd's duration flags use
//! (`10m0s`, `1h30m`, `500ms`, `1.5h`, `0`).

use std::time::Duration;

/// Why a duration does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Empty, or not a sequence of `<number><unit>`.
    #[error("invalid duration {0:?}")]
    Invalid(String),
    /// A unit Go does not know.
    #[error("unknown unit {unit:?} in duration {value:?}")]
    UnknownUnit {
        /// The unit.
        unit: String,
        /// The whole value.
        value: String,
    },
    /// Negative durations make no sense for these flags.
    #[error("negative duration {0:?}")]
    Negative(String),
    /// Beyond what `Duration` holds.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Nanoseconds per unit, Go's names.
const UNITS: &[(&str, f64)] = &[
    ("ns", 1.0),
    ("us", 1e3),
    ("µs", 1e3),
    ("μs", 1e3),
    ("ms", 1e6),
    ("s", 1e9),
    ("m", 60e9),
    ("h", 3600e9),
];

/// Parses a Go duration string.
pub fn parse_go_duration(value: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(value.to_string());
    let s = value.trim();
    if s == "0" || s == "+0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative(value.to_string()));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return Err(invalid());
        }
        let n: f64 = num.parse().map_err(|_| invalid())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        if unit.is_empty() {
            return Err(invalid());
        }
        let Some((_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(DurationError::UnknownUnit {
                unit: unit.to_string(),
                value: value.to_string(),
            });
        };
        nanos += n * scale;
        rest = tail;
    }
    // u64 nanoseconds: about 584 years, far beyond any sensible flag.
    if !nanos.is_finite() || nanos >= u64::MAX as f64 {
        return Err(DurationError::Overflow(value.to_string()));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_go_parses() {
        let d = |s| parse_go_duration(s).unwrap();
        assert_eq!(d("10m0s"), Duration::from_secs(600));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("2us"), Duration::from_micros(2));
        assert_eq!(d("5s"), Duration::from_secs(5));
    }

    #[test]
    fn refuses_what_go_refuses() {
        for bad in ["", "5", "s", "1x", "1h-2m", "--1s", "1..5s", "."] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            parse_go_duration("-1s"),
            Err(DurationError::Negative("-1s".into()))
        );
    }
}
