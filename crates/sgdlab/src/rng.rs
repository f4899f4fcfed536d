//! Seeded random streams: the ground floor of models, data, training and the lab.
//!
//! Every random draw in sgdlab comes from a stream named by `(seed, stream)`: ChaCha8 seeded
//! with `seed`, on its stream number `stream`. Streams of one seed are independent, and a
//! stream's draws depend only on its name — never on which thread runs it or in which order —
//! so that results are the same for any number of threads.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The random number generator of a stream.
pub type ChainRng = ChaCha8Rng;

/// The generator of stream `chain` of `seed` (a Monte Carlo chain, an initialisation, a
/// shuffle).
pub fn chain_rng(seed: u64, chain: u64) -> ChainRng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(chain);
    rng
}
