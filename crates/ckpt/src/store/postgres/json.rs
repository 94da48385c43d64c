//! JSON values written so that `jsonb` gives them back.
//!
//! `jsonb` keeps a number as `numeric`: its digits and scale, not the
//! form it was written in. serde_json writes a float from 1e16 up with an
//! exponent (`9.223372036854776e18` for 2^63), which `numeric` stores as
//! the integer `9223372036854776000`: read back, an integer, of another
//! value. Such a float (every float that large is a whole number) is
//! written here as its exact decimal value with `.0`
//! (`9223372036854775808.0`): `numeric` keeps the scale, and it reads back
//! as the same float, to the last bit. Floats below 1e16 already carry a
//! `.` or an exponent that `numeric` keeps as a fraction. (Only `-0.0`
//! comes back as `0.0`: `numeric` has no negative zero.)

use std::borrow::Borrow;
use std::error::Error as StdError;
use std::io;

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};
use serde_json::Value;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

/// A JSON value bound to a `jsonb` (or `json`) parameter, written as
/// described above. `T` is a [`Value`] or a reference to one.
#[derive(Debug)]
pub(super) struct PgJson<T>(pub T);

/// Binds each value as [`PgJson`], keeping SQL NULLs.
pub(super) fn each<T: Borrow<Value>>(values: Vec<Option<T>>) -> Vec<Option<PgJson<T>>> {
    values.into_iter().map(|v| v.map(PgJson)).collect()
}

/// `value` as [`PgJson`], SQL NULL for `None`.
pub(super) fn opt(value: Option<&Value>) -> Option<PgJson<&Value>> {
    value.map(PgJson)
}

/// serde_json's compact form, but a float of 1e16 or more as its exact
/// decimal value with `.0`.
struct WholeFloats;

impl Formatter for WholeFloats {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        if value.is_finite() && value.abs() >= 1e16 {
            // Rust prints a float with a precision exactly, not shortest.
            write!(writer, "{value:.1}")
        } else {
            CompactFormatter.write_f64(writer, value)
        }
    }
}

/// `value` as [`PgJson`] writes it (for tests).
#[cfg(test)]
fn text(value: &Value) -> String {
    let mut out = Vec::new();
    value
        .serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            WholeFloats,
        ))
        .expect("a Value serializes");
    String::from_utf8(out).expect("JSON is UTF-8")
}

impl<T: Borrow<Value> + std::fmt::Debug> ToSql for PgJson<T> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        if *ty == Type::JSONB {
            // The jsonb binary format's version.
            out.put_u8(1);
        }
        let mut serializer = serde_json::Serializer::with_formatter(out.writer(), WholeFloats);
        self.0.borrow().serialize(&mut serializer)?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSON | Type::JSONB)
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn large_floats_are_written_whole_with_a_fraction() {
        assert_eq!(text(&json!(2f64.powi(63))), "9223372036854775808.0");
        assert_eq!(text(&json!(-1e16)), "-10000000000000000.0");
        assert_eq!(text(&json!(f64::MAX)).len(), 309 + 2);
        // Below 1e16, serde_json's own form; ints as they are.
        assert_eq!(
            text(&json!({"a": 9999999999999998.0, "b": 0.1, "c": 1e-300, "d": u64::MAX})),
            r#"{"a":9999999999999998.0,"b":0.1,"c":1e-300,"d":18446744073709551615}"#
        );
        // Read back, each is the same float.
        for f in [
            2f64.powi(63),
            1e16,
            1.5e300,
            f64::MAX,
            -2f64.powi(70) - 2f64.powi(18),
        ] {
            let back: Value = serde_json::from_str(&text(&json!(f))).unwrap();
            assert_eq!(back.as_f64().map(f64::to_bits), Some(f.to_bits()), "{f}");
            assert!(back.is_f64(), "{f} read back as {back}");
        }
    }
}
