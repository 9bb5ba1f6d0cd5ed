//! Human size arguments: `65536`, `64K`, `512M`, `2G`, `1T` (binary units).

use std::fmt;

/// A size given on the command line, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid size {s:?}: expected a number like 64K, 512M, 2G"))?;
        let shift = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "M" | "MB" | "MIB" => 20,
            "G" | "GB" | "GIB" => 30,
            "T" | "TB" | "TIB" => 40,
            "P" | "PB" | "PIB" => 50,
            other => {
                return Err(format!(
                    "invalid size unit {other:?} in {s:?}: use K, M, G, T or P"
                ));
            }
        };
        n.checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&human(self.0))
    }
}

/// Formats a byte count the way qemu-img does: `2 GiB`, `1.5 MiB`, `512 B`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut whole = bytes;
    while whole >= 1024 && unit + 1 < UNITS.len() {
        whole /= 1024;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss)] // display only
    let value = bytes as f64 / (1u64 << (10 * unit)) as f64;
    if (value - value.round()).abs() < 0.005 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_size_with_suffixes_parses_binary_units() {
        assert_eq!("65536".parse::<ByteSize>(), Ok(ByteSize(65536)));
        assert_eq!("64K".parse::<ByteSize>(), Ok(ByteSize(65536)));
        assert_eq!("2g".parse::<ByteSize>(), Ok(ByteSize(2 << 30)));
        assert_eq!("1TiB".parse::<ByteSize>(), Ok(ByteSize(1 << 40)));
    }

    #[test]
    fn byte_size_with_garbage_is_rejected() {
        assert!("".parse::<ByteSize>().is_err());
        assert!("12Q".parse::<ByteSize>().is_err());
        assert!("99999999999P".parse::<ByteSize>().is_err());
    }

    #[test]
    fn human_round_and_fractional_values_format_like_qemu() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(2 << 30), "2 GiB");
        assert_eq!(human(1536 * 1024), "1.50 MiB");
    }
}
