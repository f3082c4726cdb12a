//! Tokens the meta-servers sign and data-servers check: "client C may do OP on block B
//! (at this version) until T".
//!
//! A token is HMAC-SHA256 with the cluster secret over a label, the block descriptor, the
//! base version (the committed version a partial write starts from), the operation, the replica chain, the client id and the expiry. A data-server accepts it only
//! if it is in the chain. Data-servers know the secret (they are in the
//! cluster), clients do not, so a client can neither forge a token nor stretch one to
//! another block, version, operation, client or time. Time is an argument: this module
//! reads no clock.
//!
//! Layout on the wire: block descriptor (12), `u16 base`, `u8 op`, `u8 n`, `n` replica ids (`u32`),
//! `u32 client`, `u64 expires_ms`, then the 32-byte MAC (see [`Token::write`]).
//!
//! It must not know who may do what (the meta-servers decide before they sign).

use hmac::{Hmac, KeyInit, Mac};
use meshfs_group::{ClientId, NodeId};
use meshfs_net::body::{BodyError, BodyReader, BodyWriter};
use sha2::Sha256;

use crate::descriptor::{BlockDescriptor, BlockVersion, read_replicas, write_replicas};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TokenOp {
    /// Write (and replicate) the block at the token's version.
    Write = 1,
}

/// A signed permission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The block, at the version the lease granted.
    pub block: BlockDescriptor,
    /// The block's committed version when the lease was granted: a write that keeps the
    /// replica's other bytes must start from exactly this version.
    pub base: BlockVersion,
    /// The operation.
    pub op: TokenOp,
    /// The data-servers holding the block, in chain order (at most 16).
    pub replicas: Vec<NodeId>,
    /// The client it was issued to.
    pub client: ClientId,
    /// Milliseconds since the Unix epoch after which it is void.
    pub expires_ms: u64,
    /// HMAC-SHA256 over all of the above.
    pub mac: [u8; 32],
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The MAC does not match: forged, or altered.
    #[error("token is forged or altered")]
    Forged,
    /// Past its expiry.
    #[error("token expired {late_ms} ms ago; ask the meta-servers for a new one")]
    Expired {
        /// How late it is.
        late_ms: u64,
    },
    /// Issued to another client.
    #[error("token was issued to client {issued}, not {presented_by}")]
    WrongClient {
        /// Whom it was issued to.
        issued: ClientId,
        /// Who presented it.
        presented_by: ClientId,
    },
    /// For another operation.
    #[error("token does not allow this operation")]
    WrongOp,
    /// This data-server is not in the token's chain.
    #[error("data-server {0} is not assigned this block")]
    NotAssigned(NodeId),
}

/// The MAC state over a token's fields, ready to finalize (sign) or compare (verify).
fn mac(
    secret: &[u8],
    block: &BlockDescriptor,
    base: BlockVersion,
    op: TokenOp,
    replicas: &[NodeId],
    client: ClientId,
    expires_ms: u64,
) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"meshfs-v1 block token");
    let mut fields = BodyWriter::new();
    block.write(&mut fields);
    fields.u16(base.0).u8(op as u8);
    write_replicas(&mut fields, replicas);
    fields.u32(client.0).u64(expires_ms);
    mac.update(&fields.finish());
    mac
}

impl Token {
    /// A token for `client` to do `op` on `block` (starting from version `base`) until
    /// `expires_ms`, signed with `secret`.
    pub fn sign(
        secret: &[u8],
        block: BlockDescriptor,
        base: BlockVersion,
        op: TokenOp,
        replicas: Vec<NodeId>,
        client: ClientId,
        expires_ms: u64,
    ) -> Token {
        let mac = mac(secret, &block, base, op, &replicas, client, expires_ms)
            .finalize()
            .into_bytes()
            .into();
        Token { block, base, op, replicas, client, expires_ms, mac }
    }

    /// Checks the token for `op` by `client` at `now_ms`.
    pub fn verify(
        &self,
        secret: &[u8],
        op: TokenOp,
        client: ClientId,
        now_ms: u64,
    ) -> Result<(), TokenError> {
        mac(secret, &self.block, self.base, self.op, &self.replicas, self.client, self.expires_ms)
            .verify_slice(&self.mac)
            .map_err(|_| TokenError::Forged)?;
        if self.op != op {
            return Err(TokenError::WrongOp);
        }
        if self.client != client {
            return Err(TokenError::WrongClient { issued: self.client, presented_by: client });
        }
        if now_ms > self.expires_ms {
            return Err(TokenError::Expired { late_ms: now_ms - self.expires_ms });
        }
        Ok(())
    }

    /// [`Token::verify`], and that data-server `me` is in the chain.
    pub fn verify_for(
        &self,
        secret: &[u8],
        op: TokenOp,
        client: ClientId,
        now_ms: u64,
        me: NodeId,
    ) -> Result<(), TokenError> {
        self.verify(secret, op, client, now_ms)?;
        if self.replicas.contains(&me) { Ok(()) } else { Err(TokenError::NotAssigned(me)) }
    }

    /// The data-server after `me` in the chain, if any.
    pub fn next_after(&self, me: NodeId) -> Option<NodeId> {
        let at = self.replicas.iter().position(|&r| r == me)?;
        self.replicas.get(at + 1).copied()
    }

    /// Writes the token: block descriptor, `u16 base`, `u8 op`, replicas, `u32 client`,
    /// `u64 expires_ms`, 32-byte MAC.
    pub fn write(&self, w: &mut BodyWriter) {
        self.block.write(w);
        w.u16(self.base.0).u8(self.op as u8);
        write_replicas(w, &self.replicas);
        w.u32(self.client.0).u64(self.expires_ms).fixed(&self.mac);
    }

    /// Reads what [`Token::write`] wrote.
    pub fn read(r: &mut BodyReader<'_>) -> Result<Token, BodyError> {
        let block = BlockDescriptor::read(r)?;
        let base = BlockVersion(r.u16("token base version")?);
        let op = match r.u8("token op")? {
            1 => TokenOp::Write,
            other => return Err(BodyError::Invalid { field: "token op", value: u64::from(other) }),
        };
        let replicas = read_replicas(r)?;
        Ok(Token {
            block,
            base,
            op,
            replicas,
            client: ClientId(r.u32("token client")?),
            expires_ms: r.u64("expires")?,
            mac: r.fixed("token mac")?,
        })
    }
}

/// The digest of one block write as it travels down the chain: SHA-256 over the block (file
/// id, index, version) and each chunk's offset, length and CRC-32, in order. The client
/// computes it over what it sent, each replica over what it received; chunks are forwarded
/// as they came, so equal bytes give equal digests.
#[derive(Debug, Clone)]
pub struct WriteDigest(Sha256);

impl WriteDigest {
    /// The digest of a write of `block`, before any chunk.
    pub fn new(block: &BlockDescriptor) -> WriteDigest {
        use sha2::Digest as _;
        let mut hash = Sha256::new();
        hash.update(b"meshfs-v1 write digest");
        hash.update(block.file.id.0.to_be_bytes());
        hash.update(block.index.to_be_bytes());
        hash.update(block.version.0.to_be_bytes());
        WriteDigest(hash)
    }

    /// Takes in the chunk of `data` at `offset`.
    pub fn add(&mut self, offset: u64, data: &[u8]) {
        use sha2::Digest as _;
        self.0.update(offset.to_be_bytes());
        self.0.update((data.len() as u64).to_be_bytes());
        self.0.update(crc32fast::hash(data).to_be_bytes());
    }

    /// The digest of everything taken in.
    pub fn finish(&self) -> [u8; 32] {
        use sha2::Digest as _;
        self.0.clone().finalize().into()
    }
}

/// A replica's word, signed with the cluster secret, that it made durable the write of
/// `block` whose digest is `digest`. The client carries the replicas' proofs to the leader,
/// which commits only if every replica of the block proves the digest the client sent.
///
/// Layout on the wire: `u32 replica, [32] digest, [32] mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaProof {
    /// The data-server that wrote it.
    pub replica: NodeId,
    /// The digest of what it wrote.
    pub digest: [u8; 32],
    /// HMAC-SHA256 over a label, the block, the replica and the digest.
    pub mac: [u8; 32],
}

fn proof_mac(
    secret: &[u8],
    block: &BlockDescriptor,
    replica: NodeId,
    digest: &[u8; 32],
) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"meshfs-v1 replica proof");
    let mut fields = BodyWriter::new();
    fields.u32(block.file.id.0).u16(block.index).u16(block.version.0).u32(replica.0);
    mac.update(&fields.finish());
    mac.update(digest);
    mac
}

impl ReplicaProof {
    /// Replica `replica`'s proof that it wrote `block` with `digest`.
    pub fn sign(
        secret: &[u8],
        block: &BlockDescriptor,
        replica: NodeId,
        digest: [u8; 32],
    ) -> ReplicaProof {
        let mac = proof_mac(secret, block, replica, &digest).finalize().into_bytes().into();
        ReplicaProof { replica, digest, mac }
    }

    /// Whether a data-server signed this for `block`.
    pub fn verify(&self, secret: &[u8], block: &BlockDescriptor) -> bool {
        proof_mac(secret, block, self.replica, &self.digest).verify_slice(&self.mac).is_ok()
    }

    /// Writes `u32 replica, [32] digest, [32] mac`.
    pub fn write(&self, w: &mut BodyWriter) {
        w.u32(self.replica.0).fixed(&self.digest).fixed(&self.mac);
    }

    /// Reads what [`ReplicaProof::write`] wrote.
    pub fn read(r: &mut BodyReader<'_>) -> Result<ReplicaProof, BodyError> {
        Ok(ReplicaProof {
            replica: NodeId(r.u32("proof replica")?),
            digest: r.fixed("proof digest")?,
            mac: r.fixed("proof mac")?,
        })
    }
}

/// Writes a list of proofs: `u8 count`, then each.
pub fn write_proofs(w: &mut BodyWriter, proofs: &[ReplicaProof]) {
    let proofs = &proofs[..proofs.len().min(MAX_PROOFS)];
    w.u8(proofs.len() as u8);
    for proof in proofs {
        proof.write(w);
    }
}

/// Reads what [`write_proofs`] wrote.
pub fn read_proofs(r: &mut BodyReader<'_>) -> Result<Vec<ReplicaProof>, BodyError> {
    let count = r.u8("proof count")?;
    if usize::from(count) > MAX_PROOFS {
        return Err(BodyError::Invalid { field: "proof count", value: u64::from(count) });
    }
    (0..count).map(|_| ReplicaProof::read(r)).collect()
}

/// Most proofs one write carries: one per replica.
pub const MAX_PROOFS: usize = 16;

/// How long a read token lasts.
pub const READ_TOKEN_MS: u64 = 15 * 60 * 1000;

/// A signed permission to read one block at one version: "client C may read block I of file
/// F at version V until T". The leader issues one with each block's metadata to a client
/// that may read the file; data-servers serve client reads only against one.
///
/// Layout on the wire: `u64 expires_ms`, then the 32-byte MAC over a label, the file id,
/// block index and block version (not the file's version: a block that did not change stays
/// readable), the client id and the expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadToken {
    /// Milliseconds since the Unix epoch after which it is void.
    pub expires_ms: u64,
    /// HMAC-SHA256 over the block, the client and the expiry.
    pub mac: [u8; 32],
}

fn read_mac(
    secret: &[u8],
    block: &BlockDescriptor,
    client: ClientId,
    expires_ms: u64,
) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"meshfs-v1 read token");
    let mut fields = BodyWriter::new();
    fields.u32(block.file.id.0).u16(block.index).u16(block.version.0);
    fields.u32(client.0).u64(expires_ms);
    mac.update(&fields.finish());
    mac
}

impl ReadToken {
    /// A token for `client` to read `block` (at its version) until `expires_ms`.
    pub fn sign(
        secret: &[u8],
        block: &BlockDescriptor,
        client: ClientId,
        expires_ms: u64,
    ) -> ReadToken {
        let mac = read_mac(secret, block, client, expires_ms).finalize().into_bytes().into();
        ReadToken { expires_ms, mac }
    }

    /// Checks that the token lets `client` read `block` at `now_ms`.
    pub fn verify(
        &self,
        secret: &[u8],
        block: &BlockDescriptor,
        client: ClientId,
        now_ms: u64,
    ) -> Result<(), TokenError> {
        read_mac(secret, block, client, self.expires_ms)
            .verify_slice(&self.mac)
            .map_err(|_| TokenError::Forged)?;
        if now_ms > self.expires_ms {
            return Err(TokenError::Expired { late_ms: now_ms - self.expires_ms });
        }
        Ok(())
    }

    /// Writes `u64 expires_ms` and the MAC.
    pub fn write(&self, w: &mut BodyWriter) {
        w.u64(self.expires_ms).fixed(&self.mac);
    }

    /// Reads what [`ReadToken::write`] wrote.
    pub fn read(r: &mut BodyReader<'_>) -> Result<ReadToken, BodyError> {
        Ok(ReadToken { expires_ms: r.u64("read token expiry")?, mac: r.fixed("read token mac")? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::{BlockVersion, FileDescriptor, FileId};

    const SECRET: &[u8] = b"cluster-secret-0123456789";

    fn block(version: u16) -> BlockDescriptor {
        BlockDescriptor {
            file: FileDescriptor { id: FileId(5), version: 2 },
            index: 3,
            version: BlockVersion(version),
        }
    }

    #[test]
    fn a_token_is_good_for_exactly_what_it_says() {
        let token = Token::sign(
            SECRET,
            block(4),
            BlockVersion(3),
            TokenOp::Write,
            vec![NodeId(4), NodeId(6)],
            ClientId(1),
            10_000,
        );
        assert_eq!(token.verify(SECRET, TokenOp::Write, ClientId(1), 9_999), Ok(()));
        assert_eq!(token.verify(SECRET, TokenOp::Write, ClientId(1), 10_000), Ok(()));
        assert_eq!(
            token.verify(SECRET, TokenOp::Write, ClientId(1), 10_500),
            Err(TokenError::Expired { late_ms: 500 })
        );
        assert_eq!(
            token.verify(SECRET, TokenOp::Write, ClientId(2), 0),
            Err(TokenError::WrongClient { issued: ClientId(1), presented_by: ClientId(2) })
        );
        assert_eq!(
            token.verify(b"another-secret-000000000", TokenOp::Write, ClientId(1), 0),
            Err(TokenError::Forged)
        );
    }

    #[test]
    fn a_read_token_is_good_for_its_block_version_client_and_time_only() {
        let token = ReadToken::sign(SECRET, &block(4), ClientId(1), 10_000);
        assert_eq!(token.verify(SECRET, &block(4), ClientId(1), 10_000), Ok(()));
        // The file's version is not bound: another block's commit leaves it good.
        let mut newer_file = block(4);
        newer_file.file.version = 9;
        assert_eq!(token.verify(SECRET, &newer_file, ClientId(1), 0), Ok(()));
        let mut other_index = block(4);
        other_index.index = 4;
        let mut other_file = block(4);
        other_file.file.id = FileId(6);
        for (what, b, client) in [
            ("another version", block(5), ClientId(1)),
            ("another block", other_index, ClientId(1)),
            ("another file", other_file, ClientId(1)),
            ("another client", block(4), ClientId(2)),
        ] {
            assert_eq!(token.verify(SECRET, &b, client, 0), Err(TokenError::Forged), "{what}");
        }
        assert_eq!(
            token.verify(SECRET, &block(4), ClientId(1), 10_001),
            Err(TokenError::Expired { late_ms: 1 })
        );
        let stretched = ReadToken { expires_ms: 20_000, ..token };
        assert_eq!(stretched.verify(SECRET, &block(4), ClientId(1), 0), Err(TokenError::Forged));
        let mut w = BodyWriter::new();
        token.write(&mut w);
        let bytes = w.finish();
        assert_eq!(bytes.len(), 40);
        assert_eq!(ReadToken::read(&mut BodyReader::new(&bytes)), Ok(token));
    }

    #[test]
    fn write_digests_follow_the_bytes_and_proofs_bind_block_replica_and_digest() {
        let mut a = WriteDigest::new(&block(4));
        let mut b = WriteDigest::new(&block(4));
        a.add(0, b"first chunk");
        b.add(0, b"first chunk");
        assert_eq!(a.finish(), b.finish());
        a.add(11, b"second");
        b.add(11, b"secont");
        assert_ne!(a.finish(), b.finish(), "one byte differs");
        assert_ne!(WriteDigest::new(&block(4)).finish(), WriteDigest::new(&block(5)).finish());
        let digest = a.finish();
        let proof = ReplicaProof::sign(SECRET, &block(4), NodeId(6), digest);
        assert!(proof.verify(SECRET, &block(4)));
        assert!(!proof.verify(SECRET, &block(5)), "another version");
        assert!(!proof.verify(b"another-secret-000000000", &block(4)));
        assert!(!ReplicaProof { replica: NodeId(7), ..proof }.verify(SECRET, &block(4)));
        assert!(!ReplicaProof { digest: b.finish(), ..proof }.verify(SECRET, &block(4)));
        let mut w = BodyWriter::new();
        write_proofs(&mut w, &[proof, proof]);
        let bytes = w.finish();
        assert_eq!(bytes.len(), 1 + 2 * 68);
        assert_eq!(read_proofs(&mut BodyReader::new(&bytes)), Ok(vec![proof, proof]));
        let too_many = [17u8];
        assert!(read_proofs(&mut BodyReader::new(&too_many)).is_err());
    }

    #[test]
    fn any_change_to_a_token_makes_it_a_forgery() {
        let token = Token::sign(
            SECRET,
            block(4),
            BlockVersion(3),
            TokenOp::Write,
            vec![NodeId(4), NodeId(6)],
            ClientId(1),
            10_000,
        );
        let altered = [
            Token { block: block(5), ..token.clone() },
            Token { base: BlockVersion(2), ..token.clone() },
            Token { client: ClientId(9), ..token.clone() },
            Token { expires_ms: u64::MAX, ..token.clone() },
            Token { replicas: vec![NodeId(4), NodeId(5)], ..token.clone() },
        ];
        for forged in altered {
            assert_eq!(
                forged.verify(SECRET, TokenOp::Write, forged.client, 0),
                Err(TokenError::Forged)
            );
        }
        let mut flipped = token.clone();
        flipped.mac[7] ^= 1;
        assert_eq!(flipped.verify(SECRET, TokenOp::Write, ClientId(1), 0), Err(TokenError::Forged));
    }

    #[test]
    fn only_data_servers_in_the_chain_accept_a_token() {
        let token = Token::sign(
            SECRET,
            block(4),
            BlockVersion(3),
            TokenOp::Write,
            vec![NodeId(4), NodeId(6)],
            ClientId(1),
            10,
        );
        assert_eq!(token.verify_for(SECRET, TokenOp::Write, ClientId(1), 0, NodeId(6)), Ok(()));
        assert_eq!(
            token.verify_for(SECRET, TokenOp::Write, ClientId(1), 0, NodeId(5)),
            Err(TokenError::NotAssigned(NodeId(5)))
        );
        assert_eq!(token.next_after(NodeId(4)), Some(NodeId(6)));
        assert_eq!(token.next_after(NodeId(6)), None);
    }

    #[test]
    fn tokens_round_trip_on_the_wire() {
        let token = Token::sign(
            SECRET,
            block(2),
            BlockVersion::UNWRITTEN,
            TokenOp::Write,
            vec![NodeId(5)],
            ClientId(3),
            42,
        );
        let mut w = BodyWriter::new();
        token.write(&mut w);
        let bytes = w.finish();
        assert_eq!(bytes.len(), 12 + 2 + 1 + 1 + 4 + 4 + 8 + 32);
        let mut r = BodyReader::new(&bytes);
        assert_eq!(Token::read(&mut r).unwrap(), token);
        r.finish().unwrap();
        for cut in 0..bytes.len() {
            assert!(Token::read(&mut BodyReader::new(&bytes[..cut])).is_err());
        }
    }
}
