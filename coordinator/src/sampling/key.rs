//! Counter-based task keys: a hash of (seed, split, step, index), so any process can draw any task in any order.

/// Which stream of tasks a descriptor comes from. Held-out splits never share a key with
/// meta-training, so evaluation tasks are never trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train = 0,
    /// The held-out tasks of the periodic evaluations (the same tasks each time).
    Eval = 1,
    /// The held-out tasks of the final evaluation.
    Final = 2,
}

/// SplitMix64's finaliser: a bijective mix with full avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The counter-based key of one task: a hash of the full coordinate, so tasks can be drawn
/// in any order, by any process, and come out the same.
pub fn task_key(seed: u64, split: Split, step: u64, index: u64) -> u64 {
    const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
    [split as u64, step, index]
        .into_iter()
        .fold(mix(seed ^ GOLDEN), |acc, part| {
            mix(acc ^ mix(part.wrapping_add(GOLDEN)))
        })
}

/// The seed of an experiment's initial parameters, kept apart from every task stream.
pub fn init_seed(seed: u64) -> u64 {
    mix(seed ^ 0x696e_6974_5f70_6172) // "init_par"
}

/// The seed of whatever a data family draws once for the whole experiment (GradNorm's
/// matrices), kept apart from every other stream.
pub fn data_seed(seed: u64) -> u64 {
    mix(seed ^ 0x6461_7461_5f73_6574) // "data_set"
}

/// The key of one split's stream of rows (multi-task learning): row `i` of the split is a
/// pure function of this key and `i`.
pub fn row_stream(seed: u64, split: Split) -> u64 {
    task_key(seed ^ 0x726f_7773, split, u64::MAX, u64::MAX) // "rows"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_do_not_collide_across_nearby_coordinates() {
        let mut keys = std::collections::HashSet::new();
        for split in [Split::Train, Split::Eval, Split::Final] {
            for step in 0..50 {
                for index in 0..50 {
                    assert!(keys.insert(task_key(1, split, step, index)));
                }
            }
        }
        assert!(keys.insert(init_seed(1)));
        assert!(keys.insert(data_seed(1)));
        for split in [Split::Train, Split::Eval, Split::Final] {
            assert!(keys.insert(row_stream(1, split)));
        }
    }
}
