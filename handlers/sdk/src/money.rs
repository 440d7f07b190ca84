//! Money on the wire is a JSON number (the ADR's `Double`); in storage it is an integer
//! count of minor units (cents), so sums never drift.

/// Minor units per major unit.
pub const MINOR_PER_MAJOR: i64 = 100;

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum AmountError {
    /// NaN or infinite.
    NotFinite,
    /// Negative where only non-negative amounts make sense.
    Negative(f64),
    /// More than two decimal places (e.g. 1.005).
    TooPrecise(f64),
    /// Outside what i64 minor units can hold.
    TooLarge(f64),
    /// Text that is not a plain decimal number (see [`parse_major`]).
    NotANumber(String),
}

impl std::fmt::Display for AmountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AmountError::NotFinite => write!(f, "amount is not a finite number"),
            AmountError::Negative(v) => write!(f, "amount {v} is negative"),
            AmountError::TooPrecise(v) => write!(f, "amount {v} has more than two decimals"),
            AmountError::TooLarge(v) => write!(f, "amount {v} is too large"),
            AmountError::NotANumber(s) => write!(f, "amount {s:?} is not a decimal number like 12.50"),
        }
    }
}

/// Converts a wire amount into minor units, refusing negative, non-finite or
/// sub-cent amounts instead of silently rounding them.
pub fn to_minor(amount: f64) -> Result<i64, AmountError> {
    if !amount.is_finite() {
        return Err(AmountError::NotFinite);
    }
    if amount < 0.0 {
        return Err(AmountError::Negative(amount));
    }
    let scaled = amount * MINOR_PER_MAJOR as f64;
    if scaled > 9.0e15 {
        return Err(AmountError::TooLarge(amount));
    }
    let rounded = scaled.round();
    // f64 cannot hold most decimals exactly (0.29 * 100 = 28.999...), so allow a tiny
    // representation error but nothing a human would call a fraction of a cent.
    if (scaled - rounded).abs() > 1e-6 {
        return Err(AmountError::TooPrecise(amount));
    }
    Ok(rounded as i64)
}

/// Converts minor units back to the wire's JSON number.
pub fn to_major(minor: i64) -> f64 {
    minor as f64 / MINOR_PER_MAJOR as f64
}

/// Parses decimal text in major units (`"12"`, `"12.5"`, `"12.50"`) into minor units
/// exactly, without going through f64. Meant for configuration values.
pub fn parse_major(text: &str) -> Result<i64, AmountError> {
    let text = text.trim();
    let not_a_number = || AmountError::NotANumber(text.to_string());
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || (unsigned.contains('.') && fraction.is_empty()) {
        return Err(not_a_number());
    }
    // The shape is now valid decimal text, so f64 parsing only serves the error values.
    let approx = || unsigned.parse::<f64>().unwrap_or(f64::NAN);
    if negative {
        return Err(AmountError::Negative(-approx()));
    }
    if fraction.len() > 2 {
        return Err(AmountError::TooPrecise(approx()));
    }
    let cents: i64 = format!("{fraction:0<2}").parse().map_err(|_| not_a_number())?;
    whole
        .parse::<i64>()
        .ok()
        .and_then(|w| w.checked_mul(MINOR_PER_MAJOR))
        .and_then(|w| w.checked_add(cents))
        .ok_or_else(|| AmountError::TooLarge(approx()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_cents_without_drift() {
        assert_eq!(to_minor(0.29), Ok(29));
        assert_eq!(to_minor(19.99), Ok(1999));
        assert_eq!(to_minor(0.1 + 0.2), Ok(30));
        assert_eq!(to_major(1999), 19.99);
    }

    #[test]
    fn refuses_bad_amounts() {
        assert_eq!(to_minor(-1.0), Err(AmountError::Negative(-1.0)));
        assert_eq!(to_minor(1.005), Err(AmountError::TooPrecise(1.005)));
        assert_eq!(to_minor(f64::NAN), Err(AmountError::NotFinite));
        assert!(matches!(to_minor(1e300), Err(AmountError::TooLarge(_))));
    }

    #[test]
    fn parses_decimal_text_exactly() {
        assert_eq!(parse_major("0"), Ok(0));
        assert_eq!(parse_major("100"), Ok(10_000));
        assert_eq!(parse_major(" 12.5 "), Ok(1250));
        assert_eq!(parse_major("+0.07"), Ok(7));
        assert_eq!(parse_major("19.99"), Ok(1999));
    }

    #[test]
    fn refuses_bad_decimal_text() {
        assert_eq!(parse_major("-1"), Err(AmountError::Negative(-1.0)));
        assert_eq!(parse_major("1.005"), Err(AmountError::TooPrecise(1.005)));
        for bad in ["", "abc", "1.", ".5", "1e3", "1,5", "NaN", "--1"] {
            assert_eq!(parse_major(bad), Err(AmountError::NotANumber(bad.to_string())), "{bad}");
        }
        assert!(matches!(
            parse_major("99999999999999999999"),
            Err(AmountError::TooLarge(_))
        ));
    }
}
