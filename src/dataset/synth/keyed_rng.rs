//! Counter-based random streams: one independent ChaCha8 generator per (seed, purpose, indices).

use outerloop_proto::splitmix::splitmix64;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream is drawn for. Part of the key, so that e.g. character 3 and alphabet 3 never
/// share a stream.
#[derive(Clone, Copy)]
pub enum Purpose {
    AlphabetStyle = 1,
    CharacterShape = 2,
    InstanceJitter = 3,
    // 4 and 5 drew a class's palette and an instance's colour jitter, before every image
    // drew its own palette; not reused, so no stream silently changes meaning.
    ImagePalette = 6,
}

/// The generator for one key. Every image is a pure function of its keys, never of a shared
/// stream's position, so the order of generation and the threading never change a file.
pub fn keyed_rng(seed: u64, purpose: Purpose, indices: &[u64]) -> ChaCha8Rng {
    let mut state = splitmix64(seed ^ splitmix64(purpose as u64));
    for &index in indices {
        state = splitmix64(state ^ splitmix64(index.wrapping_add(0x5851_f42d_4c95_7f2d)));
    }
    // Expand the 64-bit digest into ChaCha's 256-bit key by continuing the SplitMix sequence.
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        state = splitmix64(state);
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn first(seed: u64, purpose: Purpose, indices: &[u64]) -> u64 {
        keyed_rng(seed, purpose, indices).random()
    }

    #[test]
    fn the_same_key_gives_the_same_stream_and_any_change_another() {
        let base = first(7, Purpose::CharacterShape, &[3, 4]);
        assert_eq!(base, first(7, Purpose::CharacterShape, &[3, 4]));
        assert_ne!(base, first(8, Purpose::CharacterShape, &[3, 4]));
        assert_ne!(base, first(7, Purpose::InstanceJitter, &[3, 4]));
        assert_ne!(base, first(7, Purpose::CharacterShape, &[4, 3]));
        assert_ne!(base, first(7, Purpose::CharacterShape, &[3]));
    }
}
