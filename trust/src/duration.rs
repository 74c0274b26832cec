//! Go-style durations (`90s`, `24h`, `1h30m`, `250ms`), as the CRDs, flags and configs write them.

use std::time::Duration;

/// Parses a Go-style duration: one or more `<number><unit>` with units ns, us, µs, ms, s, m, h.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("invalid duration {s:?}: expected e.g. 500ms, 30s, 10m, 24h or 1h30m");
    if s.is_empty() || s.len() > 64 {
        return Err(err());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if !total.is_finite() || total > 1e10 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_and_garbage_is_refused() {
        let cases = [
            ("24h", 86400.0),
            ("1h30m", 5400.0),
            ("250ms", 0.25),
            ("1.5s", 1.5),
            ("10m", 600.0),
            ("100us", 0.0001),
        ];
        for (s, secs) in cases {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_secs_f64(secs), "{s}");
        }
        for bad in ["", "10", "h", "1 h", "1d", "-1s", "1h30", "1e9h", "99999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
