//! Kubernetes quantities (`512Mi`, `1.5Gi`, `100m`, `1e9`) as exact values,
//! so they compare by value and convert to bytes without rounding errors.

/// Why a quantity could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a quantity")]
    Invalid(String),
    #[error("{0:?} is negative")]
    Negative(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// An exact quantity: `numerator / denominator`, sign apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exact {
    negative: bool,
    numerator: u128,
    denominator: u128,
}

impl Exact {
    /// Parses Kubernetes' quantity syntax: a signed decimal number followed
    /// by a binary suffix (`Ki`…`Ei`), a decimal one (`n`, `u`, `m`, `k`,
    /// `M`…`E`) or an exponent (`e3`, `E-2`).
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let invalid = || QuantityError::Invalid(text.to_string());
        let too_large = || QuantityError::TooLarge(text.to_string());
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(invalid());
        }
        // value = mantissa / 10^scale × factor / divisor
        let mantissa: u128 = format!("{whole}{fraction}")
            .parse()
            .map_err(|_| too_large())?;
        let scale = u32::try_from(fraction.len()).map_err(|_| too_large())?;
        let (factor, divisor): (u128, u128) = match suffix {
            "" => (1, 1),
            "Ki" => (1 << 10, 1),
            "Mi" => (1 << 20, 1),
            "Gi" => (1 << 30, 1),
            "Ti" => (1 << 40, 1),
            "Pi" => (1 << 50, 1),
            "Ei" => (1 << 60, 1),
            "n" => (1, 1_000_000_000),
            "u" => (1, 1_000_000),
            "m" => (1, 1_000),
            "k" => (1_000, 1),
            "M" => (1_000_000, 1),
            "G" => (1_000_000_000, 1),
            "T" => (1_000_000_000_000, 1),
            "P" => (1_000_000_000_000_000, 1),
            "E" => (1_000_000_000_000_000_000, 1),
            exponent => {
                let exponent = exponent
                    .strip_prefix(['e', 'E'])
                    .ok_or_else(invalid)?
                    .parse::<i32>()
                    .map_err(|_| invalid())?;
                let power = 10u128
                    .checked_pow(exponent.unsigned_abs())
                    .ok_or_else(too_large)?;
                if exponent >= 0 {
                    (power, 1)
                } else {
                    (1, power)
                }
            }
        };
        let denominator = 10u128
            .checked_pow(scale)
            .and_then(|d| d.checked_mul(divisor))
            .ok_or_else(too_large)?;
        Ok(Self {
            negative: negative && mantissa != 0,
            numerator: mantissa.checked_mul(factor).ok_or_else(too_large)?,
            denominator,
        })
    }

    /// Whether both are the same number (`1Gi` and `1024Mi`, `2` and `2000m`).
    pub fn same_value(&self, other: &Self) -> bool {
        let left = self.numerator.checked_mul(other.denominator);
        let right = other.numerator.checked_mul(self.denominator);
        self.negative == other.negative && left.is_some() && left == right
    }
}

/// Bytes of a quantity (`512Mi`, `1.5Gi`, `2G`, `1e9`, `100m`), rounded up
/// to a whole byte as Kubernetes does for memory.
pub fn quantity_bytes(text: &str) -> Result<u64, QuantityError> {
    let exact = Exact::parse(text)?;
    if exact.negative {
        return Err(QuantityError::Negative(text.to_string()));
    }
    u64::try_from(exact.numerator.div_ceil(exact.denominator))
        .map_err(|_| QuantityError::TooLarge(text.to_string()))
}
