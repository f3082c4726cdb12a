//! A seeded random source for the sans-I/O state machines: nonces and backoff jitter.
//!
//! HMAC-SHA256 in counter mode: unpredictable without the seed (nonces must be), and
//! reproducible from it (a simulation replays a run from its seed). Servers seed it from the
//! OS; tests and simulations seed it themselves.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// 32 bytes from the OS (`/dev/urandom`): the seed of a server's or client's generator.
pub fn os_seed() -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

/// Random bytes from a 32-byte seed.
#[derive(Clone)]
pub struct Rng {
    key: [u8; 32],
    counter: u64,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The seed is secret: it predicts every nonce.
        f.debug_struct("Rng").field("counter", &self.counter).finish_non_exhaustive()
    }
}

impl Rng {
    /// A generator from a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Rng {
        Rng { key: seed, counter: 0 }
    }

    /// A generator from a small seed (tests and simulations).
    pub fn from_u64(seed: u64) -> Rng {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_be_bytes());
        Rng::from_seed(key)
    }

    /// The next 32 random bytes.
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("any key length");
        mac.update(&self.counter.to_be_bytes());
        self.counter += 1;
        mac.finalize().into_bytes().into()
    }

    /// A random u64.
    pub fn u64(&mut self) -> u64 {
        let block = self.bytes32();
        u64::from_be_bytes(block[..8].try_into().expect("8 bytes"))
    }

    /// A random value in `0..=max`.
    pub fn up_to(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.u64();
        }
        // Modulo bias is below 2^-60 for the small ranges used here (jitter in ms/us).
        self.u64() % (max + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let (mut a, mut b, mut c) = (Rng::from_u64(7), Rng::from_u64(7), Rng::from_u64(8));
        let xs: Vec<u64> = (0..8).map(|_| a.u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.u64()).collect();
        let zs: Vec<u64> = (0..8).map(|_| c.u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        assert!(xs.windows(2).all(|w| w[0] != w[1]));
    }

    #[test]
    fn up_to_stays_in_range() {
        let mut rng = Rng::from_u64(1);
        for max in [0u64, 1, 9, 1000] {
            for _ in 0..200 {
                assert!(rng.up_to(max) <= max);
            }
        }
    }
}
