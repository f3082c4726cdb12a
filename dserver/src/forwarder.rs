//! Bulk frames to other data-servers (chain chunks, read replies) wait here for room on the
//! link, so that many chains through one link never overflow its queue (which would close
//! it). What waits is bounded by what upstreams may send unacknowledged: clients keep a
//! window per write, and copies a few reads each.
//!
//! It must not know what the frames hold.

use std::collections::HashMap;
use std::time::Duration;

use meshfs_group::driver::Node;
use meshfs_group::{NodeId, Now};
use meshfs_net::Priority;

use crate::FORWARD_TIMER;

/// Bulk frames to another data-server wait here while more than this is queued on the link,
/// so that many chains through one link never overflow its queue (which would close it).
const FORWARD_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes waiting here for one peer: past it a frame is refused (its write fails) rather
/// than held, whatever upstreams send.
pub(crate) const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;
/// While frames wait, the link's queue is looked at this often.
const FORWARD_EVERY: Duration = Duration::from_millis(1);

/// Bulk frames (chain chunks, read replies) waiting for room on the link to a data-server.
/// What waits is bounded by what upstreams may send unacknowledged: clients keep a window per
/// write, and copies a few reads each.
#[derive(Debug, Default)]
pub(crate) struct Forwarder {
    /// Per peer, in order: the write the frame belongs to (to drop it if the write fails).
    held: HashMap<NodeId, std::collections::VecDeque<(Option<u64>, meshfs_net::Frame)>>,
    /// Bytes of the frames in `held`, per peer.
    pub(crate) held_bytes: HashMap<NodeId, usize>,
    timer_set: bool,
}

/// Why a frame could not be sent or held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The link is down.
    Down,
    /// [`MAX_HELD_BYTES`] already wait for it.
    Backlogged,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Down => write!(f, "is down"),
            Refused::Backlogged => {
                write!(f, "has {MAX_HELD_BYTES} bytes waiting for room on its link already")
            }
        }
    }
}

impl Forwarder {
    /// Sends `frame` to `peer` now or as soon as its link has room; an error if the link is
    /// down or too much waits for it already.
    pub(crate) fn send(
        &mut self,
        node: &mut Node,
        now: Now,
        peer: NodeId,
        write: Option<u64>,
        frame: meshfs_net::Frame,
    ) -> Result<(), Refused> {
        let queued = node.queued_bytes(peer).ok_or(Refused::Down)?;
        let waiting = self.held.get(&peer).is_some_and(|q| !q.is_empty());
        if !waiting && queued < FORWARD_QUEUE_BYTES {
            return node.send(peer, Priority::Bulk, frame).map_err(|_| Refused::Down);
        }
        let held = self.held_bytes.entry(peer).or_default();
        if *held + frame.body.len() > MAX_HELD_BYTES {
            return Err(Refused::Backlogged);
        }
        *held += frame.body.len();
        self.held.entry(peer).or_default().push_back((write, frame));
        if !self.timer_set {
            node.set_timer(now.mono + FORWARD_EVERY, FORWARD_TIMER);
            self.timer_set = true;
        }
        Ok(())
    }

    /// Sends what the links have room for; the writes whose peer went down meanwhile.
    pub(crate) fn pump(&mut self, node: &mut Node, now: Now) -> Vec<(u64, NodeId)> {
        self.timer_set = false;
        let mut failed = Vec::new();
        for (&peer, queue) in self.held.iter_mut() {
            while let Some((write, _)) = queue.front() {
                let write = *write;
                match node.queued_bytes(peer) {
                    None => {
                        failed.extend(queue.drain(..).filter_map(|(w, _)| w).map(|w| (w, peer)));
                        break;
                    }
                    Some(queued) if queued >= FORWARD_QUEUE_BYTES => break,
                    Some(_) => {
                        let (_, frame) = queue.pop_front().expect("front exists");
                        if let Some(held) = self.held_bytes.get_mut(&peer) {
                            *held = held.saturating_sub(frame.body.len());
                        }
                        if node.send(peer, Priority::Bulk, frame).is_err() {
                            failed.extend(write.map(|w| (w, peer)));
                        }
                    }
                }
            }
        }
        self.held.retain(|_, q| !q.is_empty());
        self.held_bytes.retain(|peer, _| self.held.contains_key(peer));
        if !self.held.is_empty() {
            node.set_timer(now.mono + FORWARD_EVERY, FORWARD_TIMER);
            self.timer_set = true;
        }
        failed.sort_unstable();
        failed.dedup();
        failed
    }

    /// Drops the frames of `write` (it failed or ended).
    pub(crate) fn drop_write(&mut self, write: u64) {
        for (peer, queue) in self.held.iter_mut() {
            let mut removed = 0;
            queue.retain(|(w, frame)| {
                let mine = *w == Some(write);
                removed += if mine { frame.body.len() } else { 0 };
                !mine
            });
            if let Some(held) = self.held_bytes.get_mut(peer) {
                *held -= removed;
            }
        }
    }
}
