//! Duration strings: `"30s"`, `"10m"`, `"2h30m"`, `"1d"`, `"2w"`.

/// A duration string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected a number followed by s, m, h, d or w (for example \"10m\" or \"2h30m\")")]
pub struct DurationError(pub String);

/// Parses a delay/TTL string into milliseconds. Units: `ms`, `s`, `m`, `h`, `d`, `w`; parts
/// may be combined (`"2h30m"`). A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<u64, DurationError> {
    let err = || DurationError(s.to_string());
    let t = s.trim();
    if t.is_empty() {
        return Err(err());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return secs.checked_mul(1000).ok_or_else(err);
    }
    let bytes = t.as_bytes();
    let mut total: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(err());
        }
        let n: u64 = t[start..i].parse().map_err(|_| err())?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let per: u64 = match &t[unit_start..i] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            _ => return Err(err()),
        };
        total = n.checked_mul(per).and_then(|v| total.checked_add(v)).ok_or_else(err)?;
    }
    Ok(total)
}

/// Parses an idempotency key TTL, which the server accepts only as `^(\d+)([smhd])$`.
pub fn parse_idempotency_ttl(s: &str) -> Result<u64, DurationError> {
    let err = || DurationError(s.to_string());
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let n: u64 = num.parse().map_err(|_| err())?;
    let per = match unit {
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(err()),
    };
    n.checked_mul(per).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trigger_dev_duration_strings() {
        assert_eq!(parse_duration("10m"), Ok(600_000));
        assert_eq!(parse_duration("2h30m"), Ok(9_000_000));
        assert_eq!(parse_duration("2w"), Ok(1_209_600_000));
        assert_eq!(parse_duration("90"), Ok(90_000));
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("m10").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(parse_idempotency_ttl("5m"), Ok(300_000));
        assert!(parse_idempotency_ttl("5w").is_err());
        assert!(parse_idempotency_ttl("1h30m").is_err());
        assert!(parse_idempotency_ttl("m").is_err());
    }
}
