//! Serialization of the status reply's counter structs.
//!
//! `#[derive(Serialize)]` writes one inlined call per field; for structs
//! that are nothing but `u64` counters that was 1.7 KB of the firmware's
//! `.text` at `opt-level = "s"`. [`serialize_counters`] writes the same
//! calls (same struct name, field names, order and values, so the same
//! bytes in every format) from one loop shared by all of them.

use serde::ser::{SerializeStruct, Serializer};

/// Serializes struct `name` with its `(field name, value)` pairs, in
/// order, exactly as `#[derive(Serialize)]` would for a struct of those
/// `u64` fields.
pub(crate) fn serialize_counters<S: Serializer>(
    serializer: S,
    name: &'static str,
    fields: &[(&'static str, u64)],
) -> Result<S::Ok, S::Error> {
    let mut st = serializer.serialize_struct(name, fields.len())?;
    for (key, value) in fields {
        st.serialize_field(key, value)?;
    }
    st.end()
}
