//! The value types of settings that have units: sizes (`128Mi`) and
//! durations (`10s`). Each parses the same way from a flag, an environment
//! variable (through [`std::str::FromStr`]) and `pulse.toml` (through
//! [`serde::Deserialize`], where a bare integer is bytes or seconds), so a
//! value means one thing wherever it is written. Errors say what was
//! written and what would do; the caller adds where it was written.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A number of bytes, at least 1: `65536`, `64Ki`, `128Mi`, `1Gi` (powers of
/// 1024) or `64k`, `128M`, `1G` (powers of 1000), as Kubernetes writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

/// A time span longer than zero: `250ms`, `10s`, `2m`, `1h`, or a bare
/// number of seconds (`1.5`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size; write e.g. 128Mi, 1Gi, 65536"))?;
        let scale: u64 = match unit.trim() {
            "" => 1,
            "k" | "K" => 1000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?}; use Ki, Mi, Gi, k, M or G"
                ))
            }
        };
        let bytes = value
            .checked_mul(scale)
            .ok_or_else(|| format!("{text:?} is too large"))?;
        if bytes == 0 {
            return Err(format!("{text:?} must be larger than zero"));
        }
        Ok(Size(bytes))
    }
}

impl FromStr for Dur {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration; write e.g. 500ms, 10s, 2m"))?;
        let seconds = match unit.trim() {
            "ms" => value / 1000.0,
            "" | "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?}; use ms, s, m or h"
                ))
            }
        };
        if !(seconds > 0.0 && seconds.is_finite()) {
            return Err(format!("{text:?} must be longer than zero"));
        }
        Duration::try_from_secs_f64(seconds)
            .map(Dur)
            .map_err(|e| format!("{text:?}: {e}"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

/// Reads a value written as a string (parsed with `FromStr`) or, for
/// units, as a bare integer (bytes or seconds).
struct TextOrNumber<T>(std::marker::PhantomData<T>, &'static str);

impl<T> Visitor<'_> for TextOrNumber<T>
where
    T: FromStr<Err = String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<T, E> {
        number.to_string().parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<T, E> {
        number.to_string().parse().map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<T, E> {
        number.to_string().parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextOrNumber(
            std::marker::PhantomData,
            "a size such as \"128Mi\" or a number of bytes",
        ))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextOrNumber(
            std::marker::PhantomData,
            "a duration such as \"10s\" or a number of seconds",
        ))
    }
}

/// Implements `Deserialize` through `FromStr` (with `String` errors) for a
/// type written as a string in `pulse.toml`, so that a bad value is
/// reported with its line and key.
macro_rules! deserialize_from_str {
    ($($type:ty => $expecting:literal),* $(,)?) => {$(
        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(deserializer)?;
                text.parse::<$type>().map_err(|e| {
                    <D::Error as serde::de::Error>::custom(format!("{e} (expected {})", $expecting))
                })
            }
        }
    )*};
}
pub(crate) use deserialize_from_str;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |text: &str| text.parse::<Dur>().map(|d| d.0);
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(d("3"), Ok(Duration::from_secs(3)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(d("0s").unwrap_err().contains("longer than zero"));
        assert!(d("ten").unwrap_err().contains("not a duration"));
        assert!(d("5 days").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn sizes() {
        let s = |text: &str| text.parse::<Size>().map(|s| s.0);
        assert_eq!(s("128Mi"), Ok(128 << 20));
        assert_eq!(s("1Gi"), Ok(1 << 30));
        assert_eq!(s("64M"), Ok(64_000_000));
        assert_eq!(s("4096"), Ok(4096));
        assert!(s("0").unwrap_err().contains("larger than zero"));
        assert!(s("lots").unwrap_err().contains("not a size"));
        assert!(s("5MB").unwrap_err().contains("unknown unit"));
    }

    #[derive(Deserialize)]
    struct Sample {
        size: Size,
        time: Dur,
    }

    #[test]
    fn toml_reads_the_same_values_and_reports_the_line() {
        let sample: Sample = toml::from_str("size = \"64Ki\"\ntime = \"250ms\"\n").unwrap();
        assert_eq!(sample.size, Size(65536));
        assert_eq!(sample.time, Dur(Duration::from_millis(250)));
        let bare: Sample = toml::from_str("size = 4096\ntime = 3\n").unwrap();
        assert_eq!(bare.size, Size(4096));
        assert_eq!(bare.time, Dur(Duration::from_secs(3)));
        let error = toml::from_str::<Sample>("size = \"1Mi\"\ntime = \"soon\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("not a duration"), "{error}");
    }
}
