//! A connection's outbound queue: two priorities, a byte bound each, vectored writes.
//!
//! Control frames (pings, consensus) go before bulk frames (block data), at frame
//! granularity: a frame partly written is always finished first, so a control frame waits for
//! at most one bulk frame (about 1 MiB) already on its way. Each priority has its own byte
//! bound; a push past it is refused with [`SendError::QueueFull`], which is how a slow reader
//! pushes back on its sender instead of making the process grow.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use crate::frame::{self, Frame};

/// Which queue a frame goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Small, latency-sensitive messages: ping/pong, consensus, requests. Never waits behind
    /// queued bulk frames.
    Control,
    /// Large transfers: block data. Sent when no control frame is waiting.
    Bulk,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The queue of that priority holds its maximum; wait for `NetEvent::Writable`.
    #[error("outbound {priority:?} queue full ({queued} bytes queued, limit {limit})")]
    QueueFull {
        /// The queue that is full.
        priority: Priority,
        /// Bytes queued in it now.
        queued: usize,
        /// Its bound.
        limit: usize,
    },
    /// The connection is gone (closed, or the id is stale).
    #[error("connection closed")]
    Closed,
    /// The body is longer than any peer accepts: bulk data must be sent in chunks.
    #[error("a {len}-byte body exceeds the {max}-byte frame limit")]
    TooLarge {
        /// The body's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// At most this many chunks go into one `writev`.
const MAX_IOVECS: usize = 64;
/// Small frames are encoded into the tail chunk of their queue while it stays under this
/// size, so a burst of small frames costs one allocation and one iovec per 64 KiB, not one
/// per frame. (Measured with `cargo bench -p meshfs-net --bench loopback`; see BENCHMARKS.md.)
const COALESCE_BYTES: usize = 64 * 1024;

/// Bodies this large are queued as they are, not copied ([`Outbound::push_owned`]).
const OWN_CHUNK_BYTES: usize = 16 * 1024;

/// Encoded frames waiting to be written, in chunks: a chunk holds one or more whole frames.
#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
}

/// The two queues of one connection, plus the frame partly written.
#[derive(Debug)]
pub(crate) struct Outbound {
    control: Queue,
    bulk: Queue,
    /// A frame of which the first `partial_written` bytes are on the wire; always finished
    /// before anything else is written.
    partial: Option<Vec<u8>>,
    partial_written: usize,
    /// Bound on bytes queued per priority (the partial frame is counted apart: at most one).
    limit: usize,
    /// Set when a push was refused; cleared (and reported as writable) once the refused queue
    /// has drained to half the limit.
    refused: bool,
}

impl Outbound {
    pub(crate) fn new(limit: usize) -> Outbound {
        Outbound {
            control: Queue::default(),
            bulk: Queue::default(),
            partial: None,
            partial_written: 0,
            limit,
            refused: false,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.partial.is_none() && self.control.frames.is_empty() && self.bulk.frames.is_empty()
    }

    /// Bytes waiting, all queues.
    pub(crate) fn queued_bytes(&self) -> usize {
        let partial = self.partial.as_ref().map_or(0, |f| f.len() - self.partial_written);
        partial + self.control.bytes + self.bulk.bytes
    }

    /// Queues one already-encoded frame (tests use this; the loop uses `push_frame`).
    #[cfg(test)]
    pub(crate) fn push(&mut self, priority: Priority, frame: Vec<u8>) -> Result<(), SendError> {
        self.admit(priority, frame.len())?;
        let queue = self.queue_mut(priority);
        queue.bytes += frame.len();
        queue.frames.push_back(frame);
        Ok(())
    }

    /// Encodes and queues one frame. A small frame goes into the tail chunk of its queue if it
    /// fits under [`COALESCE_BYTES`]; otherwise into a chunk of its own.
    pub(crate) fn push_frame(
        &mut self,
        priority: Priority,
        kind: u16,
        request_id: u64,
        body: &[u8],
    ) -> Result<(), SendError> {
        let len = frame::HEADER_LEN + body.len();
        self.admit(priority, len)?;
        let queue = self.queue_mut(priority);
        queue.bytes += len;
        match queue.frames.back_mut() {
            // Only into a chunk with the room already (an owned body must not be copied).
            Some(tail) if tail.len() + len <= COALESCE_BYTES.min(tail.capacity()) => {
                frame::encode(kind, request_id, body, tail)
            }
            _ => {
                let mut chunk =
                    Vec::with_capacity(if len < COALESCE_BYTES { COALESCE_BYTES } else { len });
                frame::encode(kind, request_id, body, &mut chunk);
                queue.frames.push_back(chunk);
            }
        }
        Ok(())
    }

    /// Queues `frame`, taking its body: a body of [`OWN_CHUNK_BYTES`] or more becomes a
    /// chunk of its own without a copy (its header goes before it); a smaller frame is
    /// encoded as [`Outbound::push_frame`] does.
    pub(crate) fn push_owned(&mut self, priority: Priority, frame: Frame) -> Result<(), SendError> {
        if frame.body.len() < OWN_CHUNK_BYTES {
            return self.push_frame(priority, frame.kind, frame.request_id, &frame.body);
        }
        let header = frame.header();
        let len = frame::HEADER_LEN + frame.body.len();
        self.admit(priority, len)?;
        let queue = self.queue_mut(priority);
        queue.bytes += len;
        match queue.frames.back_mut() {
            Some(tail) if tail.len() + header.len() <= COALESCE_BYTES.min(tail.capacity()) => {
                tail.extend_from_slice(&header)
            }
            _ => queue.frames.push_back(header.to_vec()),
        }
        queue.frames.push_back(frame.body);
        Ok(())
    }

    /// Refuses a frame of `len` bytes that would take its queue past the limit. A frame
    /// larger than the whole limit is still accepted into an empty queue, so every frame the
    /// codec allows can be sent.
    fn admit(&mut self, priority: Priority, len: usize) -> Result<(), SendError> {
        let limit = self.limit;
        let queued = self.queue_mut(priority).bytes;
        if queued > 0 && queued + len > limit {
            self.refused = true;
            return Err(SendError::QueueFull { priority, queued, limit });
        }
        Ok(())
    }

    fn queue_mut(&mut self, priority: Priority) -> &mut Queue {
        match priority {
            Priority::Control => &mut self.control,
            Priority::Bulk => &mut self.bulk,
        }
    }

    /// True once after a refused push when both queues are at or under half the limit.
    pub(crate) fn take_writable(&mut self) -> bool {
        if self.refused && self.control.bytes <= self.limit / 2 && self.bulk.bytes <= self.limit / 2
        {
            self.refused = false;
            return true;
        }
        false
    }

    /// Writes until the queues are empty (`Ok(true)`) or the writer would block (`Ok(false)`).
    pub(crate) fn flush<W: Write>(&mut self, writer: &mut W) -> io::Result<bool> {
        loop {
            if self.is_empty() {
                return Ok(true);
            }
            let written = {
                let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(MAX_IOVECS);
                if let Some(frame) = &self.partial {
                    slices.push(IoSlice::new(&frame[self.partial_written..]));
                }
                for frame in self.control.frames.iter().chain(self.bulk.frames.iter()) {
                    if slices.len() == MAX_IOVECS {
                        break;
                    }
                    slices.push(IoSlice::new(frame));
                }
                match writer.write_vectored(&slices) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => return Err(err),
                }
            };
            self.consume(written);
        }
    }

    /// Drops `n` written bytes, in the order `flush` laid them out: partial, control, bulk.
    fn consume(&mut self, mut n: usize) {
        if let Some(frame) = &self.partial {
            let left = frame.len() - self.partial_written;
            if n < left {
                self.partial_written += n;
                return;
            }
            n -= left;
            self.partial = None;
            self.partial_written = 0;
        }
        while n > 0 {
            let queue =
                if self.control.frames.is_empty() { &mut self.bulk } else { &mut self.control };
            let frame = queue.frames.pop_front().expect("consumed more bytes than were queued");
            queue.bytes -= frame.len();
            if n < frame.len() {
                self.partial_written = n;
                self.partial = Some(frame);
                return;
            }
            n -= frame.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most `budget` bytes per call and records them.
    struct Trickle {
        budget: usize,
        calls: usize,
        block_after: usize,
        out: Vec<u8>,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.calls == self.block_after {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls += 1;
            let n = buf.len().min(self.budget);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        // Like writev: takes from several slices in one call, up to the budget.
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls == self.block_after {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls += 1;
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.budget - n);
                self.out.extend_from_slice(&buf[..take]);
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn control_overtakes_queued_bulk_but_not_a_partial_frame() {
        let mut out = Outbound::new(1 << 20);
        out.push(Priority::Bulk, vec![b'B'; 10]).unwrap();
        out.push(Priority::Bulk, vec![b'b'; 10]).unwrap();
        let mut w = Trickle { budget: 4, calls: 0, block_after: 1, out: Vec::new() };
        assert!(!out.flush(&mut w).unwrap()); // 4 bytes of the first bulk frame written
        out.push(Priority::Control, vec![b'C'; 3]).unwrap();
        w.block_after = usize::MAX;
        w.budget = usize::MAX;
        assert!(out.flush(&mut w).unwrap());
        // Rest of the partial bulk frame, then the control frame, then the queued bulk frame.
        assert_eq!(w.out, [&[b'B'; 10][..], &[b'C'; 3], &[b'b'; 10]].concat());
        assert_eq!(out.queued_bytes(), 0);
    }

    #[test]
    fn the_bound_refuses_then_reports_writable_at_half() {
        let mut out = Outbound::new(100);
        out.push(Priority::Bulk, vec![0; 60]).unwrap();
        out.push(Priority::Bulk, vec![0; 40]).unwrap();
        assert!(matches!(
            out.push(Priority::Bulk, vec![0; 1]),
            Err(SendError::QueueFull { priority: Priority::Bulk, queued: 100, limit: 100 })
        ));
        // The control queue has its own bound.
        out.push(Priority::Control, vec![0; 10]).unwrap();
        assert!(!out.take_writable());
        let mut w = Trickle { budget: 70, calls: 0, block_after: 1, out: Vec::new() };
        assert!(!out.flush(&mut w).unwrap());
        // 70 bytes written: the control frame (10) and the 60-byte bulk frame; 40 queued.
        assert_eq!(out.queued_bytes(), 40);
        assert!(out.take_writable());
        assert!(!out.take_writable(), "reported once");
    }

    #[test]
    fn small_frames_share_chunks_and_decode_back_in_order() {
        let mut out = Outbound::new(1 << 20);
        for id in 0..1000u64 {
            out.push_frame(Priority::Bulk, 7, id, &id.to_be_bytes()).unwrap();
        }
        let frame_len = frame::HEADER_LEN + 8;
        assert_eq!(out.queued_bytes(), 1000 * frame_len);
        assert_eq!(
            out.bulk.frames.len(),
            (1000 * frame_len).div_ceil(COALESCE_BYTES / frame_len * frame_len)
        );
        // A frame too big to coalesce gets its own chunk; the next small one starts another.
        out.push_frame(Priority::Bulk, 8, 0, &vec![1u8; COALESCE_BYTES]).unwrap();
        out.push_frame(Priority::Bulk, 9, 0, b"after").unwrap();
        let mut w = Trickle { budget: 1000, calls: 0, block_after: usize::MAX, out: Vec::new() };
        assert!(out.flush(&mut w).unwrap());
        let mut decoder = frame::Decoder::new(2 * COALESCE_BYTES as u32);
        decoder.extend_from_slice(&w.out);
        for id in 0..1000u64 {
            let f = decoder.decode().unwrap().unwrap();
            assert_eq!((f.kind, f.request_id, f.body), (7, id, id.to_be_bytes().to_vec()));
        }
        assert_eq!(decoder.decode().unwrap().unwrap().kind, 8);
        assert_eq!(decoder.decode().unwrap().unwrap().body, b"after");
    }

    #[test]
    fn owned_bodies_are_queued_without_a_copy_and_decode_as_encoded_ones() {
        let mut out = Outbound::new(1 << 20);
        out.push_frame(Priority::Bulk, 5, 1, b"before").unwrap();
        let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let body = big.clone();
        let at = body.as_ptr();
        out.push_owned(Priority::Bulk, Frame::checksummed(6, 2, body)).unwrap();
        assert_eq!(out.bulk.frames.back().unwrap().as_ptr(), at, "the body itself is queued");
        out.push_owned(Priority::Bulk, Frame::new(7, 3, b"after".to_vec())).unwrap();
        assert_eq!(out.bulk.frames.len(), 3, "a small frame never lands in an owned body");
        out.push_owned(Priority::Bulk, Frame::new(8, 4, big.clone())).unwrap();
        assert_eq!(out.queued_bytes(), 4 * frame::HEADER_LEN + 6 + 5 + 2 * big.len());
        let mut w = Trickle { budget: 7000, calls: 0, block_after: usize::MAX, out: Vec::new() };
        assert!(out.flush(&mut w).unwrap());
        let mut expected = Vec::new();
        frame::encode(5, 1, b"before", &mut expected);
        frame::encode(6, 2, &big, &mut expected);
        frame::encode(7, 3, b"after", &mut expected);
        frame::encode(8, 4, &big, &mut expected);
        assert_eq!(w.out, expected, "a checksum computed ahead gives the same bytes");
    }

    #[test]
    fn a_partly_written_chunk_is_never_appended_to() {
        let mut out = Outbound::new(1 << 20);
        out.push_frame(Priority::Control, 1, 1, b"first").unwrap();
        let mut w = Trickle { budget: 10, calls: 0, block_after: 1, out: Vec::new() };
        assert!(!out.flush(&mut w).unwrap());
        out.push_frame(Priority::Control, 1, 2, b"second").unwrap();
        w.block_after = usize::MAX;
        w.budget = usize::MAX;
        assert!(out.flush(&mut w).unwrap());
        let mut decoder = frame::Decoder::new(64);
        decoder.extend_from_slice(&w.out);
        assert_eq!(decoder.decode().unwrap().unwrap().body, b"first");
        assert_eq!(decoder.decode().unwrap().unwrap().body, b"second");
    }

    #[test]
    fn an_oversized_frame_fits_an_empty_queue() {
        let mut out = Outbound::new(10);
        out.push(Priority::Bulk, vec![0; 50]).unwrap();
        assert!(out.push(Priority::Bulk, vec![0; 1]).is_err());
    }
}
