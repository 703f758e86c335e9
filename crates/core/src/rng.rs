//! A tiny deterministic PRNG (SplitMix64). The core has no global randomness:
//! the seed comes from [`crate::Config::rng_seed`] and the node id.

#[derive(Clone, Debug)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64, id: u64) -> Self {
        // Nodes sharing a seed must draw unrelated timeouts. SplitMix64
        // advances its state by the golden gamma, so seeding node k with
        // `k * gamma` would make its stream node 1's stream shifted by k-1
        // draws: two nodes could fall into lockstep and split every vote
        // forever (found by the simulator). Scramble the id through the
        // output function instead.
        Rng {
            state: seed ^ mix(id ^ 0xD1B5_4A32_D192_ED03),
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }

    /// A value in `[lo, hi)`. Requires `lo < hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo < hi);
        lo + self.next_u64() % (hi - lo)
    }
}

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams of different nodes with one seed are not shifted copies of
    /// each other (regression: lockstep election timeouts).
    #[test]
    fn node_streams_are_not_shifted_copies() {
        let draw = |id: u64| -> alloc::vec::Vec<u64> {
            let mut r = Rng::new(0, id);
            (0..64).map(|_| r.range(10, 20)).collect()
        };
        let (a, b) = (draw(1), draw(2));
        for shift in 0..8 {
            let same = a[shift..].iter().zip(&b).filter(|(x, y)| x == y).count();
            assert!(same < 40, "node 2 repeats node 1 shifted by {shift}");
            let same = b[shift..].iter().zip(&a).filter(|(x, y)| x == y).count();
            assert!(same < 40, "node 1 repeats node 2 shifted by {shift}");
        }
    }
}
