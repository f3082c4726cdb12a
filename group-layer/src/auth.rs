//! HMAC-SHA256 challenge-response: both ends prove they know a key, the key never travels.
//!
//! The dialer sends a fresh nonce; the acceptor answers with its own nonce; the dialer sends
//! its proof, and only if it holds does the acceptor send its own. Each proof is HMAC-SHA256 over a label naming the
//! side (so one side's proof can never be replayed as the other's), the cluster name, both
//! identities and both nonces. For servers the key is the cluster secret; for clients it is
//! the client's own key from config.conf.
//!
//! This authenticates; it does not encrypt. A machine that can relay both directions of a
//! connection can still ride on it, as with any scheme without channel binding.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::ClientId;
use crate::message::Identity;

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a proof.
pub const PROOF_LEN: usize = 32;

/// A fresh random challenge.
pub type Nonce = [u8; NONCE_LEN];
/// An HMAC-SHA256 proof.
pub type Proof = [u8; PROOF_LEN];

/// Which end of the handshake a proof is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The end that opened the connection.
    Dialer,
    /// The end that accepted it.
    Acceptor,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Side::Dialer => b"meshfs-v2 dialer proof",
            Side::Acceptor => b"meshfs-v2 acceptor proof",
        }
    }
}

/// What a proof binds together.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    /// The cluster name both ends claim.
    pub cluster: &'a str,
    /// Who dialed.
    pub dialer: Identity,
    /// Who accepted.
    pub acceptor: Identity,
    /// The dialer's nonce.
    pub dialer_nonce: &'a Nonce,
    /// The acceptor's nonce.
    pub acceptor_nonce: &'a Nonce,
}

fn mac(key: &[u8], side: Side, t: &Transcript<'_>) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(side.label());
    mac.update(&(t.cluster.len() as u64).to_be_bytes());
    mac.update(t.cluster.as_bytes());
    mac.update(&t.dialer.to_bytes());
    mac.update(&t.acceptor.to_bytes());
    mac.update(t.dialer_nonce);
    mac.update(t.acceptor_nonce);
    mac
}

/// The proof `side` sends for `transcript`, keyed by `key`.
pub fn prove(key: &[u8], side: Side, transcript: &Transcript<'_>) -> Proof {
    mac(key, side, transcript).finalize().into_bytes().into()
}

/// The key of client `id` with `salt` in a cluster with `secret`: HMAC-SHA256 of the secret
/// over a label, the id and the salt, in hex. Servers compute it when they read the config,
/// so no client key is stored on a server; the client keeps it in its client config.
pub fn client_key(secret: &[u8], id: ClientId, salt: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(b"meshfs-v1 client key");
    mac.update(&id.0.to_be_bytes());
    mac.update(&(salt.len() as u64).to_be_bytes());
    mac.update(salt.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `proof` is what `side` should have sent. Compares in constant time.
pub fn verify(key: &[u8], side: Side, transcript: &Transcript<'_>, proof: &Proof) -> bool {
    mac(key, side, transcript).verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientId, NodeId, Role};

    #[test]
    fn proofs_bind_key_side_and_transcript() {
        let dialer = Identity::Server { id: NodeId(1), role: Role::MServer };
        let acceptor = Identity::Server { id: NodeId(2), role: Role::DServer };
        let (na, nb) = ([1u8; 32], [2u8; 32]);
        let t =
            Transcript { cluster: "c", dialer, acceptor, dialer_nonce: &na, acceptor_nonce: &nb };
        let key = b"0123456789abcdef";
        let proof = prove(key, Side::Dialer, &t);
        assert!(verify(key, Side::Dialer, &t, &proof));
        assert!(!verify(b"0123456789abcdeX", Side::Dialer, &t, &proof), "wrong key");
        assert!(
            !verify(key, Side::Acceptor, &t, &proof),
            "a dialer proof is not an acceptor proof"
        );
        let other_nonce = [3u8; 32];
        let replay = Transcript { dialer_nonce: &other_nonce, ..t };
        assert!(
            !verify(key, Side::Dialer, &replay, &proof),
            "a proof is not valid for a new nonce"
        );
        let as_client = Transcript { dialer: Identity::Client { id: ClientId(1) }, ..t };
        assert!(!verify(key, Side::Dialer, &as_client, &proof), "identities are bound");
        let other_cluster = Transcript { cluster: "d", ..t };
        assert!(!verify(key, Side::Dialer, &other_cluster, &proof), "the cluster name is bound");
    }

    #[test]
    fn hmac_sha256_matches_rfc4231_case_2() {
        // Guards against a wrong wiring of the crate: RFC 4231, test case 2.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let out: [u8; 32] = mac.finalize().into_bytes().into();
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
