//! Human-readable byte sizes: parsing `500M`, `10G`, `1.5GiB` for flags, and formatting
//! sizes for log lines and the status file.

use std::fmt;
use std::str::FromStr;

/// A number of bytes that parses from and prints as a human size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    /// Accepts a plain number of bytes or a number with a binary suffix: `K`, `M`, `G`, `T`
    /// (also `KB`/`KiB`, case-insensitive). Suffixes are powers of 1024, as `du` and `df`
    /// use them, because the budget is compared with disk usage.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        // A leading sign would otherwise read as an unknown unit ("-1" has no digits first).
        if t.starts_with(['-', '+']) {
            return Err(format!(
                "invalid size {s:?}: not a size (a size is a number of bytes, with an optional K, M, G or T, e.g. 500M or 10G)"
            ));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim().to_ascii_lowercase();
        let mult: u64 = match unit.as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => {
                return Err(format!(
                    "invalid size {s:?}: unknown unit {unit:?} (use a number with K, M, G or T, e.g. 500M or 10G)"
                ))
            }
        };
        let value: f64 = num.parse().map_err(|_| {
            format!("invalid size {s:?}: expected a number with an optional unit, e.g. 500M or 10G")
        })?;
        let bytes = value * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("invalid size {s:?}: out of range"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut i = 0;
        while v >= 1024.0 && i + 1 < UNITS.len() {
            v /= 1024.0;
            i += 1;
        }
        if i == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[i])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_sizes() {
        let cases = [
            ("0", 0),
            ("4096", 4096),
            ("500M", 500 << 20),
            ("10G", 10 << 30),
            ("10g", 10 << 30),
            ("1.5GiB", 3 << 29),
            ("64 KiB", 64 << 10),
            ("2T", 2 << 40),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<ByteSize>(), Ok(ByteSize(want)), "{input}");
        }
    }

    #[test]
    fn rejects_bad_sizes_with_a_hint() {
        for input in ["", "G", "10X", "-5M", "1e999G"] {
            let err = input.parse::<ByteSize>().unwrap_err();
            assert!(err.contains("invalid size"), "{input}: {err}");
        }
    }

    #[test]
    fn a_negative_number_is_not_a_size_rather_than_an_unknown_unit() {
        for input in ["-1", "-5M", "+1G", " -0"] {
            let err = input.parse::<ByteSize>().unwrap_err();
            assert!(
                err.contains("not a size") && !err.contains("unit \""),
                "{input}: {err}"
            );
        }
    }

    #[test]
    fn displays_in_binary_units() {
        assert_eq!(ByteSize(512).to_string(), "512 B");
        assert_eq!(ByteSize(1536).to_string(), "1.5 KiB");
        assert_eq!(ByteSize(10 << 30).to_string(), "10.0 GiB");
    }
}
