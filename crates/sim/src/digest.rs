//! FNV-1a 64-bit hashing: a fixed, seedless hash for trace fingerprints,
//! entry digests and hash chains (std's `DefaultHasher` is not guaranteed
//! stable across releases, so traces would not compare across toolchains).

/// FNV-1a offset basis: the hash of nothing.
pub const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01B3;

/// Folds `bytes` into `h`.
pub fn fnv_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Folds `v` (little-endian) into `h`.
pub fn fnv_u64(h: u64, v: u64) -> u64 {
    fnv_bytes(h, &v.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv_bytes(FNV_OFFSET, b""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv_bytes(FNV_OFFSET, b"a"), 0xAF63_DC4C_8601_EC8C);
        assert_eq!(fnv_bytes(FNV_OFFSET, b"foobar"), 0x8594_4171_F739_67E8);
    }
}
