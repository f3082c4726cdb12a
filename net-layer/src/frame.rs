//! The frame: a fixed 28-byte header, then a body.
//!
//! ```text
//! offset size field
//!      0    4 magic        0x4D53_4846 ("MSHF")
//!      4    1 version      PROTOCOL_VERSION
//!      5    1 flags        reserved, must be 0 in version 1
//!      6    2 kind         message kind, never 0; the net layer carries it, upper layers name it
//!      8    8 request_id   a response carries the id of its request; 0 when unsolicited
//!     16    4 body_len     bytes of body after the header, at most the decoder's maximum
//!     20    4 body_crc     CRC-32 (IEEE) of the body
//!     24    4 header_crc   CRC-32 (IEEE) of bytes 0..24
//! ```
//! All integers are big-endian. The codec is sans-I/O: [`Decoder`] takes bytes and yields
//! frames; [`encode`] appends a frame's bytes to a buffer. Nothing here touches a socket.
//!
//! Order of checks in [`Decoder::decode`]: magic, header checksum, version, flags, kind, length
//! against the maximum (before any allocation for the body), and, once the body is in, its
//! checksum. The first failure is returned as a [`FrameError`] naming what was wrong; the
//! caller closes the connection, since nothing after a bad frame can be trusted.

use byteorder::{BigEndian, ByteOrder};

/// First four bytes of every frame: "MSHF".
pub const MAGIC: u32 = 0x4D53_4846;
/// The version of this frame layout.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 28;
/// Default maximum body length: a 1 MiB bulk chunk plus room for its message header.
pub const DEFAULT_MAX_BODY_LEN: u32 = 1024 * 1024 + 64 * 1024;
/// Bytes the decoder asks the socket for at a time when no larger frame is pending.
pub const READ_CHUNK: usize = 64 * 1024;

const _: () = assert!(HEADER_LEN == 4 + 1 + 1 + 2 + 8 + 4 + 4 + 4);
const _: () = assert!(DEFAULT_MAX_BODY_LEN as usize >= 1024 * 1024);

/// What was wrong with a frame. Each one closes the connection it arrived on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first four bytes were not [`MAGIC`]: not our protocol, or a lost frame boundary.
    #[error("bad magic {found:#010x} (expected {MAGIC:#010x})")]
    BadMagic {
        /// The four bytes found.
        found: u32,
    },
    /// The header checksum did not match: the header was damaged.
    #[error("header checksum mismatch (computed {computed:#010x}, header says {stored:#010x})")]
    HeaderChecksum {
        /// Checksum computed over the received header bytes.
        computed: u32,
        /// Checksum the header carried.
        stored: u32,
    },
    /// A protocol version this build does not speak.
    #[error("unsupported protocol version {found} (this build speaks {PROTOCOL_VERSION})")]
    Version {
        /// The version found.
        found: u8,
    },
    /// Reserved flag bits were set.
    #[error("reserved flags {found:#04x} set")]
    Flags {
        /// The flags byte found.
        found: u8,
    },
    /// Kind 0 is never valid.
    #[error("frame kind 0 is invalid")]
    ZeroKind,
    /// The body is longer than this connection accepts.
    #[error("body length {len} exceeds the maximum {max}")]
    TooLarge {
        /// Length the header announced.
        len: u32,
        /// The configured maximum.
        max: u32,
    },
    /// The body checksum did not match: the body was damaged.
    #[error("body checksum mismatch (computed {computed:#010x}, header says {stored:#010x})")]
    BodyChecksum {
        /// Checksum computed over the received body.
        computed: u32,
        /// Checksum the header carried.
        stored: u32,
    },
}

/// A decoded frame: kind, request id and body. The checksums were verified on the way in.
#[derive(Clone)]
pub struct Frame {
    /// Message kind, never 0. The net layer does not interpret it.
    pub kind: u16,
    /// Request id; responses echo their request's id.
    pub request_id: u64,
    /// The body bytes.
    pub body: Vec<u8>,
    /// The body's CRC-32, if computed ahead ([`Frame::checksummed`]); it must match `body`.
    body_crc: Option<u32>,
}

impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        // The cached checksum is a cache: equal frames are equal on the wire.
        (self.kind, self.request_id, &self.body) == (other.kind, other.request_id, &other.body)
    }
}

impl Eq for Frame {}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Bodies can be a MiB; print their size, not their bytes.
        f.debug_struct("Frame")
            .field("kind", &self.kind)
            .field("request_id", &self.request_id)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Frame {
    /// A frame of `kind` answering or starting `request_id`, carrying `body`.
    pub fn new(kind: u16, request_id: u64, body: Vec<u8>) -> Frame {
        Frame { kind, request_id, body, body_crc: None }
    }

    /// A frame whose body checksum is computed now, on the calling thread (a worker), so
    /// that the event loop that sends it does not spend the time. Sending a large body then
    /// moves it to the socket's queue without a copy.
    pub fn checksummed(kind: u16, request_id: u64, body: Vec<u8>) -> Frame {
        let body_crc = Some(crc32fast::hash(&body));
        Frame { kind, request_id, body, body_crc }
    }

    /// The 28 header bytes of this frame (the body checksum computed unless cached).
    pub fn header(&self) -> [u8; HEADER_LEN] {
        match self.body_crc {
            Some(crc) => header_with_crc(self.kind, self.request_id, self.body.len(), crc),
            None => encode_header(self.kind, self.request_id, &self.body),
        }
    }

    /// Bytes this frame takes on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Appends this frame's wire bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode(self.kind, self.request_id, &self.body, out);
    }
}

/// The 28 header bytes for a frame of `kind` and `request_id` carrying `body`.
///
/// Panics if `kind` is 0 or the body is longer than `u32::MAX`: both are caller bugs, since
/// kinds are constants and bodies are built by code that bounds them.
pub fn encode_header(kind: u16, request_id: u64, body: &[u8]) -> [u8; HEADER_LEN] {
    header_with_crc(kind, request_id, body.len(), crc32fast::hash(body))
}

/// The header for a body of `len` bytes whose CRC-32 is `body_crc`.
fn header_with_crc(kind: u16, request_id: u64, len: usize, body_crc: u32) -> [u8; HEADER_LEN] {
    assert!(kind != 0, "frame kind 0 is reserved");
    let body_len = u32::try_from(len).expect("frame body longer than u32::MAX");
    let mut header = [0u8; HEADER_LEN];
    BigEndian::write_u32(&mut header[0..4], MAGIC);
    header[4] = PROTOCOL_VERSION;
    header[5] = 0;
    BigEndian::write_u16(&mut header[6..8], kind);
    BigEndian::write_u64(&mut header[8..16], request_id);
    BigEndian::write_u32(&mut header[16..20], body_len);
    BigEndian::write_u32(&mut header[20..24], body_crc);
    let header_crc = crc32fast::hash(&header[0..24]);
    BigEndian::write_u32(&mut header[24..28], header_crc);
    header
}

/// Appends the wire bytes of one frame to `out`.
pub fn encode(kind: u16, request_id: u64, body: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + body.len());
    out.extend_from_slice(&encode_header(kind, request_id, body));
    out.extend_from_slice(body);
}

/// A validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    kind: u16,
    request_id: u64,
    body_len: u32,
    body_crc: u32,
}

/// Checks a header. `bytes` holds at least [`HEADER_LEN`] bytes.
fn check_header(bytes: &[u8], max_body_len: u32) -> Result<Header, FrameError> {
    debug_assert!(bytes.len() >= HEADER_LEN);
    let magic = BigEndian::read_u32(&bytes[0..4]);
    if magic != MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    let stored = BigEndian::read_u32(&bytes[24..28]);
    let computed = crc32fast::hash(&bytes[0..24]);
    if stored != computed {
        return Err(FrameError::HeaderChecksum { computed, stored });
    }
    if bytes[4] != PROTOCOL_VERSION {
        return Err(FrameError::Version { found: bytes[4] });
    }
    if bytes[5] != 0 {
        return Err(FrameError::Flags { found: bytes[5] });
    }
    let kind = BigEndian::read_u16(&bytes[6..8]);
    if kind == 0 {
        return Err(FrameError::ZeroKind);
    }
    let body_len = BigEndian::read_u32(&bytes[16..20]);
    if body_len > max_body_len {
        return Err(FrameError::TooLarge { len: body_len, max: max_body_len });
    }
    Ok(Header {
        kind,
        request_id: BigEndian::read_u64(&bytes[8..16]),
        body_len,
        body_crc: BigEndian::read_u32(&bytes[20..24]),
    })
}

/// Turns a byte stream into frames, holding at most one frame plus one read chunk.
///
/// Fill it either with [`Decoder::extend_from_slice`] or, to read from a socket without an
/// extra copy, with [`Decoder::read_buf`] followed by [`Decoder::advance`]; then call
/// [`Decoder::decode`] until it returns `Ok(None)`.
///
/// A body of [`DIRECT_BODY`] bytes or more is read straight into the `Vec` the frame will
/// own, once its header is validated: [`Decoder::read_buf`] hands out the rest of that body,
/// so the bytes are not copied out of a shared buffer afterwards.
///
/// Memory bound: the buffer grows past [`READ_CHUNK`] only to hold a frame whose header has
/// been validated, so it never exceeds `HEADER_LEN + max_body_len + READ_CHUNK` bytes; a
/// direct body is at most `max_body_len` beside a buffer of at most two chunks.
#[derive(Debug)]
pub struct Decoder {
    /// Backing storage; bytes `start..end` are received and not yet decoded. Its length is
    /// its usable size (zeroed once when grown, never per read).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_body_len: u32,
    /// Set after the first error: a stream is not resynchronised after a bad frame.
    failed: Option<FrameError>,
    /// A large frame whose body is being read in place.
    direct: Option<Direct>,
    /// Whether the last [`Decoder::read_buf`] handed out the direct body.
    reading_direct: bool,
}

/// Bodies this large are read in place ([`Decoder`]).
pub const DIRECT_BODY: usize = 32 * 1024;

/// A large frame being received into its own body.
#[derive(Debug)]
struct Direct {
    header: Header,
    body: Vec<u8>,
    filled: usize,
}

impl Decoder {
    /// A decoder accepting bodies up to `max_body_len` bytes.
    pub fn new(max_body_len: u32) -> Decoder {
        Decoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_body_len,
            failed: None,
            direct: None,
            reading_direct: false,
        }
    }

    /// The largest body this decoder accepts.
    pub fn max_body_len(&self) -> u32 {
        self.max_body_len
    }

    /// Changes the largest body accepted from the next frame on (e.g. raised once a peer has
    /// authenticated). Bytes already buffered are checked against the new limit.
    pub fn set_max_body_len(&mut self, max_body_len: u32) {
        self.max_body_len = max_body_len;
        // A header refused only for its length was not consumed: it decodes now if the new
        // limit takes it.
        if let Some(FrameError::TooLarge { len, .. }) = self.failed
            && len <= max_body_len
        {
            self.failed = None;
        }
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        let direct = self.direct.as_ref().map_or(0, |d| HEADER_LEN + d.filled);
        direct + self.end - self.start
    }

    /// Bytes of memory the buffers hold (for tests of the memory bound).
    pub fn capacity(&self) -> usize {
        self.buf.capacity() + self.direct.as_ref().map_or(0, |d| d.body.capacity())
    }

    /// The most memory this decoder may ever hold.
    pub fn capacity_bound(&self) -> usize {
        HEADER_LEN + self.max_body_len as usize + 2 * READ_CHUNK
    }

    /// Total bytes (header + body) of the frame at the front, as far as known now.
    fn pending_frame_len(&self) -> usize {
        let have = &self.buf[self.start..self.end];
        if have.len() < HEADER_LEN {
            return HEADER_LEN;
        }
        // Not yet validated: clamp so a lying length cannot make us allocate.
        let len = BigEndian::read_u32(&have[16..20]).min(self.max_body_len);
        HEADER_LEN + len as usize
    }

    /// Space to read into. Write received bytes at its start, then call [`Decoder::advance`].
    /// Never empty.
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.reading_direct = self.direct.as_ref().is_some_and(|d| d.filled < d.body.len());
        if self.reading_direct {
            let direct = self.direct.as_mut().expect("checked");
            return &mut direct.body[direct.filled..];
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let frame_len = self.pending_frame_len();
        // A connection allowed only small frames (one not yet authenticated) reads in small
        // pieces: a thousand idle strangers hold a few MiB, not 64 KiB each.
        let chunk = READ_CHUNK.min(HEADER_LEN + self.max_body_len as usize);
        let want = frame_len.max(chunk);
        // Move the partial frame to the front when the room behind it is short of `want`.
        if self.buf.len() - self.start < want && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < want {
            debug_assert!(want <= self.capacity_bound());
            self.buf.resize(want, 0);
        }
        if self.end == self.buf.len() {
            // A whole frame is buffered but not decoded yet; give read room for the next chunk
            // (bounded: `want` plus one chunk).
            let grown = self.buf.len() + chunk;
            debug_assert!(grown <= self.capacity_bound() + READ_CHUNK);
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written at the start of the last [`Decoder::read_buf`].
    pub fn advance(&mut self, n: usize) {
        if self.reading_direct
            && let Some(direct) = &mut self.direct
        {
            assert!(direct.filled + n <= direct.body.len(), "advance past the read buffer");
            direct.filled += n;
            return;
        }
        assert!(self.end + n <= self.buf.len(), "advance past the read buffer");
        self.end += n;
    }

    /// Appends received bytes (for callers that already hold them in memory).
    pub fn extend_from_slice(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let space = self.read_buf();
            let n = space.len().min(data.len());
            space[..n].copy_from_slice(&data[..n]);
            self.advance(n);
            data = &data[n..];
        }
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the first error found.
    /// After an error the decoder keeps returning it.
    pub fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if let Some(direct) = &self.direct {
            if direct.filled < direct.body.len() {
                return Ok(None);
            }
            let Direct { header, body, .. } = self.direct.take().expect("checked");
            return self.checked(header, body).map(Some);
        }
        let have = &self.buf[self.start..self.end];
        if have.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = match check_header(have, self.max_body_len) {
            Ok(header) => header,
            Err(err) => return Err(self.fail(err)),
        };
        let total = HEADER_LEN + header.body_len as usize;
        if have.len() < total {
            if header.body_len as usize >= DIRECT_BODY {
                // The rest of this body is read in place: move what came so far into it.
                let mut body = vec![0u8; header.body_len as usize];
                let filled = have.len() - HEADER_LEN;
                body[..filled].copy_from_slice(&have[HEADER_LEN..]);
                self.direct = Some(Direct { header, body, filled });
                self.start = 0;
                self.end = 0;
            }
            return Ok(None);
        }
        let body = have[HEADER_LEN..total].to_vec();
        self.start += total;
        self.checked(header, body).map(Some)
    }

    /// The frame of `header` with `body`, once the body checksum matches.
    fn checked(&mut self, header: Header, body: Vec<u8>) -> Result<Frame, FrameError> {
        let computed = crc32fast::hash(&body);
        if computed != header.body_crc {
            return Err(self.fail(FrameError::BodyChecksum { computed, stored: header.body_crc }));
        }
        Ok(Frame::new(header.kind, header.request_id, body))
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.failed = Some(err.clone());
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(bytes: &[u8], max: u32) -> Result<Vec<Frame>, FrameError> {
        let mut decoder = Decoder::new(max);
        decoder.extend_from_slice(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode()? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn round_trip_one_frame() {
        let frame = Frame::new(7, 42, b"hello".to_vec());
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        assert_eq!(bytes.len(), frame.wire_len());
        assert_eq!(decode_all(&bytes, 1024).unwrap(), vec![frame]);
    }

    #[test]
    fn golden_bytes() {
        // Freezes the layout: changing it needs a new PROTOCOL_VERSION.
        let mut bytes = Vec::new();
        encode(0x0102, 0x0304_0506_0708_090a, b"abc", &mut bytes);
        let expected: [u8; 31] = [
            0x4d, 0x53, 0x48, 0x46, // magic "MSHF"
            0x01, // version
            0x00, // flags
            0x01, 0x02, // kind
            0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, // request id
            0x00, 0x00, 0x00, 0x03, // body length
            0x35, 0x24, 0x41, 0xc2, // crc32("abc")
            0xe1, 0x3d, 0x89, 0x9a, // header crc (checked against Python zlib.crc32)
            b'a', b'b', b'c',
        ];
        assert_eq!(bytes, expected);
        assert_eq!(crc32fast::hash(b"abc"), 0x352441c2);
    }

    #[test]
    fn empty_body_round_trips() {
        let frame = Frame::new(1, 0, Vec::new());
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(decode_all(&bytes, 0).unwrap(), vec![frame]);
    }

    #[test]
    fn frame_at_exact_maximum_is_accepted_one_past_is_refused() {
        let max = 4096;
        let mut bytes = Vec::new();
        encode(3, 1, &vec![9u8; max as usize], &mut bytes);
        assert_eq!(decode_all(&bytes, max).unwrap().len(), 1);
        assert_eq!(
            decode_all(&bytes, max - 1),
            Err(FrameError::TooLarge { len: max, max: max - 1 })
        );
    }

    #[test]
    fn too_large_is_refused_from_the_header_alone() {
        // Only the header arrives; the decoder must refuse without waiting for (or allocating)
        // the announced 4 GiB body.
        let header = encode_header(3, 1, &[]);
        let mut lying = header;
        BigEndian::write_u32(&mut lying[16..20], u32::MAX);
        let crc = crc32fast::hash(&lying[0..24]);
        BigEndian::write_u32(&mut lying[24..28], crc);
        let mut decoder = Decoder::new(1024);
        decoder.extend_from_slice(&lying);
        assert_eq!(decoder.decode(), Err(FrameError::TooLarge { len: u32::MAX, max: 1024 }));
        assert!(decoder.capacity() <= decoder.capacity_bound());
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut good = Vec::new();
        encode(5, 9, b"body", &mut good);
        let refix = |bytes: &mut Vec<u8>| {
            let crc = crc32fast::hash(&bytes[0..24]);
            BigEndian::write_u32(&mut bytes[24..28], crc);
        };

        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(decode_all(&bad, 64), Err(FrameError::BadMagic { .. })));

        let mut bad = good.clone();
        bad[10] ^= 1; // request id damaged, header crc not updated
        assert!(matches!(decode_all(&bad, 64), Err(FrameError::HeaderChecksum { .. })));

        let mut bad = good.clone();
        bad[4] = 2;
        refix(&mut bad);
        assert_eq!(decode_all(&bad, 64), Err(FrameError::Version { found: 2 }));

        let mut bad = good.clone();
        bad[5] = 0x80;
        refix(&mut bad);
        assert_eq!(decode_all(&bad, 64), Err(FrameError::Flags { found: 0x80 }));

        let mut bad = good.clone();
        bad[6] = 0;
        bad[7] = 0;
        refix(&mut bad);
        assert_eq!(decode_all(&bad, 64), Err(FrameError::ZeroKind));

        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(decode_all(&bad, 64), Err(FrameError::BodyChecksum { .. })));
    }

    #[test]
    fn errors_are_sticky() {
        let mut decoder = Decoder::new(64);
        decoder.extend_from_slice(&[0u8; HEADER_LEN]);
        assert!(decoder.decode().is_err());
        let mut good = Vec::new();
        encode(1, 1, b"x", &mut good);
        decoder.extend_from_slice(&good);
        assert!(decoder.decode().is_err(), "a stream is never resynchronised after a bad frame");
    }

    #[test]
    fn byte_at_a_time_delivery() {
        let frames: Vec<Frame> = (0..5u8)
            .map(|i| Frame::new(u16::from(i) + 1, u64::from(i), vec![i; i as usize * 100]))
            .collect();
        let mut bytes = Vec::new();
        for frame in &frames {
            frame.encode(&mut bytes);
        }
        let mut decoder = Decoder::new(1024);
        let mut out = Vec::new();
        for byte in bytes {
            decoder.extend_from_slice(&[byte]);
            while let Some(frame) = decoder.decode().unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, frames);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn large_frames_through_read_buf_stay_within_bound() {
        let max = DEFAULT_MAX_BODY_LEN;
        let body = vec![0xA5u8; max as usize];
        let mut bytes = Vec::new();
        for id in 0..3 {
            encode(2, id, &body, &mut bytes);
        }
        let mut decoder = Decoder::new(max);
        let mut input = &bytes[..];
        let mut frames = 0;
        while !input.is_empty() {
            let space = decoder.read_buf();
            // Odd read sizes, as a socket would give.
            let n = space.len().min(input.len()).min(77_777);
            space[..n].copy_from_slice(&input[..n]);
            decoder.advance(n);
            input = &input[n..];
            while let Some(frame) = decoder.decode().unwrap() {
                assert_eq!(frame.body.len(), max as usize);
                frames += 1;
            }
            assert!(decoder.capacity() <= decoder.capacity_bound());
        }
        assert_eq!(frames, 3);
    }

    #[test]
    fn a_damaged_large_body_read_in_place_is_refused() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut bytes = Vec::new();
        encode(3, 5, &body, &mut bytes);
        bytes[HEADER_LEN + 70_000] ^= 4;
        let mut decoder = Decoder::new(1 << 20);
        decoder.extend_from_slice(&bytes[..1000]);
        assert_eq!(decoder.decode(), Ok(None), "the body is now read in place");
        decoder.extend_from_slice(&bytes[1000..]);
        assert!(matches!(decoder.decode(), Err(FrameError::BodyChecksum { .. })));
    }

    proptest! {
        #[test]
        fn small_and_large_frames_decode_in_order_from_any_read_sizes(
            sizes in proptest::collection::vec(
                prop_oneof![0usize..200, DIRECT_BODY - 1..DIRECT_BODY + 1, 40_000usize..140_000],
                1..6,
            ),
            reads in proptest::collection::vec(1usize..90_000, 1..40),
        ) {
            let frames: Vec<Frame> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| Frame::new(7, i as u64, (0..n).map(|b| (b * 31 + i) as u8).collect()))
                .collect();
            let mut bytes = Vec::new();
            for frame in &frames {
                frame.encode(&mut bytes);
            }
            let mut decoder = Decoder::new(1 << 20);
            let (mut input, mut out, mut k) = (&bytes[..], Vec::new(), 0);
            while !input.is_empty() {
                let space = decoder.read_buf();
                let n = space.len().min(input.len()).min(reads[k % reads.len()]);
                k += 1;
                space[..n].copy_from_slice(&input[..n]);
                decoder.advance(n);
                input = &input[n..];
                while let Some(frame) = decoder.decode().unwrap() {
                    out.push(frame);
                }
                prop_assert!(decoder.capacity() <= decoder.capacity_bound());
            }
            prop_assert_eq!(out, frames);
            prop_assert_eq!(decoder.buffered(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic_or_overallocate(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            max in 0u32..2048,
        ) {
            let mut decoder = Decoder::new(max);
            decoder.extend_from_slice(&bytes);
            for _ in 0..bytes.len() + 1 {
                match decoder.decode() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
            prop_assert!(decoder.capacity() <= decoder.capacity_bound());
        }

        #[test]
        fn frames_round_trip_and_any_cut_is_incomplete(
            kind in 1u16..,
            request_id in any::<u64>(),
            body in proptest::collection::vec(any::<u8>(), 0..2048),
            cut in any::<prop::sample::Index>(),
        ) {
            let frame = Frame::new(kind, request_id, body);
            let mut bytes = Vec::new();
            frame.encode(&mut bytes);
            prop_assert_eq!(decode_all(&bytes, 2048).unwrap(), vec![frame.clone()]);

            let cut = cut.index(bytes.len());
            let mut decoder = Decoder::new(2048);
            decoder.extend_from_slice(&bytes[..cut]);
            prop_assert_eq!(decoder.decode(), Ok(None));
            decoder.extend_from_slice(&bytes[cut..]);
            prop_assert_eq!(decoder.decode(), Ok(Some(frame)));
        }

        #[test]
        fn a_flipped_bit_is_always_detected(
            body in proptest::collection::vec(any::<u8>(), 1..512),
            bit in any::<prop::sample::Index>(),
        ) {
            let mut bytes = Vec::new();
            encode(9, 77, &body, &mut bytes);
            let bit = bit.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            // A flip in the length field may make the frame look incomplete; it must never
            // decode as a good frame.
            let mut decoder = Decoder::new(4096);
            decoder.extend_from_slice(&bytes);
            prop_assert!(!matches!(decoder.decode(), Ok(Some(_))));
        }
    }

    #[test]
    fn a_decoder_for_small_frames_holds_small_buffers() {
        let mut small = Decoder::new(4096);
        let room = small.read_buf().len();
        assert!(room <= HEADER_LEN + 4096, "{room} bytes to read into");
        assert!(small.capacity() <= HEADER_LEN + 4096);
        let mut large = Decoder::new(DEFAULT_MAX_BODY_LEN);
        assert_eq!(large.read_buf().len(), READ_CHUNK);
        // Raised once trusted, it reads in whole chunks again.
        small.set_max_body_len(DEFAULT_MAX_BODY_LEN);
        assert_eq!(small.read_buf().len(), READ_CHUNK);
    }
}
