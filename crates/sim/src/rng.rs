//! The simulator's only source of randomness: a SplitMix64 generator seeded
//! from the run's seed. Nothing in a run reads the clock or the OS RNG.

/// A small, fast, deterministic PRNG (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng {
            state: seed ^ 0x5DEE_CE66_D1CE_F00D,
        }
    }

    /// An independent generator derived from this one and a stream label,
    /// so that adding draws to one stream does not shift another.
    pub fn fork(&mut self, label: u64) -> Rng {
        Rng::new(self.next_u64() ^ label.wrapping_mul(0xA24B_AED4_963E_E407))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `[lo, hi)`; `lo` when the range is empty.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }

    /// An index in `[0, n)`; 0 when `n == 0`.
    pub fn index(&mut self, n: usize) -> usize {
        self.range(0, n as u64) as usize
    }

    /// True with probability `p_ppm / 1_000_000`.
    pub fn chance_ppm(&mut self, p_ppm: u32) -> bool {
        p_ppm > 0 && self.range(0, PPM) < u64::from(p_ppm)
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

/// Probabilities are integers in parts per million, so configurations print
/// and compare exactly.
pub const PPM: u64 = 1_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_ranges_hold() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..1000 {
            let x = a.range(3, 17);
            assert_eq!(x, b.range(3, 17));
            assert!((3..17).contains(&x));
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
        assert_eq!(Rng::new(9).range(5, 5), 5);
    }

    #[test]
    fn chance_is_roughly_calibrated() {
        let mut r = Rng::new(7);
        let hits = (0..100_000).filter(|_| r.chance_ppm(250_000)).count();
        assert!((23_000..27_000).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| r.chance_ppm(0)));
    }
}
