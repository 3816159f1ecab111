//! Durations in policy files: a number with a unit (`250ms`, `5s`, `2m`, `1h`).

use std::time::Duration;

/// A duration written without a unit, with an unknown one, or out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}; use a number and a unit, e.g. 250ms, 5s, 2m, 1h")]
pub struct InvalidDuration {
    pub text: String,
}

/// Parses `250ms`, `1.5s`, `2m`, `1h`; the unit is required so that `5` is never guessed.
pub fn parse(text: &str) -> Result<Duration, InvalidDuration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| invalid(text))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid(text))?;
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(invalid(text)),
    };
    Duration::try_from_secs_f64(number * seconds_per_unit).map_err(|_| invalid(text))
}

fn invalid(text: &str) -> InvalidDuration {
    InvalidDuration {
        text: text.to_string(),
    }
}

/// Formats a duration the way policies write it, for the effective-config dump.
pub fn format(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn rejects_missing_or_unknown_unit() {
        assert!(parse("5")
            .unwrap_err()
            .to_string()
            .contains("invalid duration \"5\""));
        assert!(parse("5 sec").is_err());
        assert!(parse("s").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn formats_back() {
        assert_eq!(format(Duration::from_secs(5)), "5s");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
    }
}
