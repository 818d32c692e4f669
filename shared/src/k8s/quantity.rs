//! Kubernetes resource quantities (`500m`, `1Gi`, `1e3`) read exactly, in thousandths.

use serde_json::Value;

/// Why a value is no quantity; each holds the value as shown (a string quoted, JSON otherwise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0} is not a Kubernetes quantity")]
    NotAQuantity(String),
    #[error("{0} is too large a quantity")]
    TooLarge(String),
}

/// A Kubernetes quantity (`500m`, `1`, `2Gi`, `1e3`, `100M`, `0.5`) in thousandths of its unit,
/// exactly, rounded up as Kubernetes' `MilliValue` does.
pub fn parse_quantity(s: &str) -> Result<i128, QuantityError> {
    let bad = || QuantityError::NotAQuantity(format!("{s:?}"));
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.len() + fraction.len() == 0 || fraction.contains('.') {
        return Err(bad());
    }
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(QuantityError::TooLarge(format!("{s:?}")));
    }
    let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| bad())? };
    let (ten, two): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        e if e.len() > 1 && (e.starts_with('e') || e.starts_with('E')) => {
            let exp = &e[1..];
            let unsigned = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            (exp.parse::<i32>().ok().filter(|x| x.abs() <= 40).ok_or_else(bad)?, 0)
        }
        _ => return Err(bad()),
    };
    // value = mantissa * 10^(ten - fraction digits) * 2^two, in thousandths.
    let scale = ten + 3 - i32::try_from(fraction.len()).map_err(|_| bad())?;
    let too_large = || QuantityError::TooLarge(format!("{s:?}"));
    let scaled = mantissa.checked_mul(1i128 << two).ok_or_else(too_large)?;
    let milli = if scale >= 0 {
        scaled.checked_mul(10i128.checked_pow(scale.unsigned_abs()).ok_or_else(too_large)?).ok_or_else(too_large)?
    } else {
        let divisor = 10i128.checked_pow(scale.unsigned_abs()).ok_or_else(too_large)?;
        scaled.div_euclid(divisor) + i128::from(scaled.rem_euclid(divisor) != 0)
    };
    Ok(if negative { -milli } else { milli })
}

/// A quantity as JSON (the API server sends strings; a chart may write `cpu: 1`).
pub fn quantity(v: &Value) -> Result<i128, QuantityError> {
    match v {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => parse_quantity(&n.to_string()),
        other => Err(QuantityError::NotAQuantity(other.to_string())),
    }
}

/// Thousandths back to a readable quantity: `500m`, `1`, `2Gi` for byte resources.
pub fn show_quantity(resource: &str, milli: i128) -> String {
    let milli = milli.max(0);
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let n = milli / 1000;
    let bytes = resource == "memory" || resource == "ephemeral-storage" || resource.starts_with("hugepages-");
    if bytes && n > 0 {
        for (suffix, shift) in [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if n % (1i128 << shift) == 0 {
                return format!("{}{suffix}", n >> shift);
            }
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn quantities_parse_exactly_to_thousandths() {
        let table: &[(&str, Result<i128, ()>)] = &[
            ("500m", Ok(500)),
            ("1", Ok(1000)),
            ("0.5", Ok(500)),
            (".5", Ok(500)),
            ("2Gi", Ok(2 * (1 << 30) * 1000)),
            ("1Ki", Ok(1_024_000)),
            ("1e3", Ok(1_000_000)),
            ("1E3", Ok(1_000_000)),
            ("1e-3", Ok(1)),
            ("100M", Ok(100_000_000_000)),
            ("1k", Ok(1_000_000)),
            ("1E", Ok(1_000_000_000_000_000_000_000)),
            ("1n", Ok(1)), // rounded up, as Kubernetes' MilliValue
            ("1500u", Ok(2)),
            ("0", Ok(0)),
            ("-1", Ok(-1000)),
            ("+2", Ok(2000)),
            ("1.5Gi", Ok(1_610_612_736_000)),
            ("", Err(())),
            ("abc", Err(())),
            ("1.2.3", Err(())),
            ("1Gb", Err(())),
            ("1e", Err(())),
            ("1 Gi", Err(())),
            ("m", Err(())),
            ("1e99", Err(())),
        ];
        for (s, want) in table {
            assert_eq!(parse_quantity(s).map_err(|_| ()), *want, "{s:?}");
        }
        assert_eq!(quantity(&json!(2)), Ok(2000), "a chart may write a number");
        assert_eq!(quantity(&json!(0.25)), Ok(250));
        let shown: Vec<String> =
            [("cpu", 500), ("cpu", 2000), ("memory", 2 * (1 << 30) * 1000), ("nvidia.com/gpu", 0), ("memory", 1500)]
                .iter()
                .map(|(r, m)| show_quantity(r, *m))
                .collect();
        assert_eq!(shown, ["500m", "2", "2Gi", "0", "1500m"]);
        assert_eq!(quantity(&json!("lots")).unwrap_err().to_string(), "\"lots\" is not a Kubernetes quantity");
        assert_eq!(quantity(&json!(true)).unwrap_err().to_string(), "true is not a Kubernetes quantity");
        assert_eq!(parse_quantity("1e40").unwrap_err(), QuantityError::TooLarge("\"1e40\"".into()));
    }
}
