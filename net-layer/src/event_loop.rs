//! The mio event loop: listeners, connections in a slab, framed I/O, timers, a waker, signals.
//!
//! The loop is driven by its owner: call [`EventLoop::poll`], act on the [`NetEvent`]s it
//! returns (send, close, connect, set timers), call `poll` again. Sends are queued and written
//! at the start of the next `poll`, so a burst of sends costs one `writev` per connection.
//!
//! mio's contract, kept here: every ready socket is drained until `WouldBlock` (or until its
//! read budget is spent, in which case it is revisited without waiting for a new edge),
//! `Interrupted` is retried, spurious events are harmless, and tokens index a [`Slab`]. A
//! connection id carries a generation so that an id kept after its connection closed can never
//! reach the next connection that reuses the slot.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::frame::{DEFAULT_MAX_BODY_LEN, Decoder, Frame, FrameError};
use crate::outbound::{Outbound, Priority, SendError};
use crate::timer::{TimerId, TimerQueue};

/// Token of the waker; slab keys never reach it.
const WAKER_TOKEN: Token = Token(usize::MAX);

/// Limits of one event loop.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Largest frame body accepted on any connection, in bytes.
    pub max_body_len: u32,
    /// Most accepted connections open at once; further accepts are closed. Dialed ones
    /// have their own budget, so strangers filling this one never keep a server from
    /// dialing its peers.
    pub max_connections: usize,
    /// Most dialed connections open at once.
    pub max_outbound: usize,
    /// Bytes each outbound queue (control, bulk) of a connection may hold.
    pub outbound_limit_bytes: usize,
    /// Bytes read from one connection per readiness before the others get a turn.
    pub read_budget_bytes: usize,
}

impl Default for LoopConfig {
    fn default() -> LoopConfig {
        LoopConfig {
            max_body_len: DEFAULT_MAX_BODY_LEN,
            max_connections: 4096,
            max_outbound: 1024,
            outbound_limit_bytes: 8 * 1024 * 1024,
            read_budget_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Names one connection for as long as it is open. Stale ids are refused, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    fn new(index: usize, generation: u32) -> ConnId {
        let index = u32::try_from(index).expect("more than u32::MAX slab entries");
        ConnId((u64::from(generation) << 32) | u64::from(index))
    }

    fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    /// The raw value, for logs and for test harnesses that fake a network.
    pub fn to_raw(self) -> u64 {
        self.0
    }

    /// An id from a raw value. Only simulations and tests build ids this way; the loop hands
    /// out the real ones.
    pub fn from_raw(raw: u64) -> ConnId {
        ConnId(raw)
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}.{}", self.0 & 0xffff_ffff, self.0 >> 32)
    }
}

/// Names one listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(usize);

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its end.
    PeerClosed,
    /// The socket failed.
    Io(String),
    /// The peer sent a frame that failed a check; nothing after it can be trusted.
    BadFrame(FrameError),
    /// An outbound connect failed.
    ConnectFailed(String),
    /// This process closed it, for the reason given.
    Local(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::PeerClosed => write!(f, "closed by peer"),
            CloseReason::Io(err) => write!(f, "i/o error: {err}"),
            CloseReason::BadFrame(err) => write!(f, "bad frame: {err}"),
            CloseReason::ConnectFailed(err) => write!(f, "connect failed: {err}"),
            CloseReason::Local(reason) => write!(f, "closed locally: {reason}"),
        }
    }
}

/// What happened, as returned by [`EventLoop::poll`].
#[derive(Debug)]
pub enum NetEvent {
    /// A listener accepted a connection.
    Accepted {
        /// The listener.
        listener: ListenerId,
        /// The new connection.
        conn: ConnId,
        /// The remote address.
        peer: SocketAddr,
    },
    /// An outbound connect completed.
    Connected {
        /// The connection from [`EventLoop::connect`].
        conn: ConnId,
    },
    /// A whole, verified frame arrived.
    Frame {
        /// The connection it came on.
        conn: ConnId,
        /// The frame.
        frame: Frame,
    },
    /// A queue that refused a send has drained to half its bound: send again.
    Writable {
        /// The connection.
        conn: ConnId,
    },
    /// The connection is gone; its id is dead from now on. Every connection ends with exactly
    /// one of these, however it ended.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A timer fired.
    Timer {
        /// The timer.
        id: TimerId,
        /// The token given to [`EventLoop::set_timer`].
        token: u64,
    },
    /// Another thread called [`Notifier::notify`].
    Woken,
    /// A watched signal arrived (see [`EventLoop::watch_signals`]).
    Signal(i32),
}

/// Wakes the loop from another thread: a worker finished and left its result in a channel.
#[derive(Debug, Clone)]
pub struct Notifier(Arc<Waker>);

impl Notifier {
    /// Makes the loop's current or next `poll` return with [`NetEvent::Woken`].
    pub fn notify(&self) -> io::Result<()> {
        self.0.wake()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Non-blocking connect in progress; the first writable event settles it.
    Connecting,
    Open,
}

#[derive(Debug)]
struct Connection {
    id: ConnId,
    stream: TcpStream,
    peer: SocketAddr,
    phase: Phase,
    decoder: Decoder,
    out: Outbound,
    /// In the dirty list: has queued output not yet tried.
    dirty: bool,
    /// In the readable list: its read budget ran out with data possibly left.
    pending_read: bool,
    /// Accepted (counted against `max_connections`) rather than dialed.
    inbound: bool,
}

#[derive(Debug)]
enum Source {
    Listener(TcpListener),
    Conn(Box<Connection>),
    Signal { pipe: UnixStream, signal: i32 },
}

/// What a read pass left the connection in.
enum ReadOutcome {
    Drained,
    BudgetSpent,
    /// A frame past the connection's body limit came right behind frames decoded in the same
    /// pass, and the owner may raise the limit on seeing them (a handshake that just
    /// finished): decoding waits for the next poll, when the frame is decoded or refused.
    Held,
    Close(CloseReason),
}

/// The event loop. One per server process, owned by its one network thread.
#[derive(Debug)]
pub struct EventLoop {
    poll: Poll,
    mio_events: Events,
    sources: Slab<Source>,
    waker: Arc<Waker>,
    timers: TimerQueue,
    config: LoopConfig,
    next_generation: u32,
    connections: usize,
    /// Of them, accepted ones.
    inbound: usize,
    /// Lines saying an accept was refused: a few a second.
    refusal_log: crate::log_budget::LogBudget,
    /// Connections with output queued since the last flush.
    dirty: Vec<ConnId>,
    /// Connections whose read budget ran out: read again without waiting for an edge.
    readable: Vec<ConnId>,
    /// Connections whose decoding waits for their owner to see the frames decoded so far
    /// ([`ReadOutcome::Held`]): read again in the next `poll`, not this one.
    held: Vec<ConnId>,
    /// Events produced outside `poll` (a local close), delivered by the next `poll`.
    pending: Vec<NetEvent>,
}

impl EventLoop {
    /// A loop with the given limits.
    pub fn new(config: LoopConfig) -> io::Result<EventLoop> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
        Ok(EventLoop {
            poll,
            mio_events: Events::with_capacity(1024),
            sources: Slab::new(),
            waker,
            timers: TimerQueue::default(),
            config,
            next_generation: 0,
            connections: 0,
            inbound: 0,
            refusal_log: crate::log_budget::LogBudget::new(5, Duration::from_secs(1)),
            dirty: Vec::new(),
            readable: Vec::new(),
            held: Vec::new(),
            pending: Vec::new(),
        })
    }

    /// The loop's limits.
    pub fn config(&self) -> &LoopConfig {
        &self.config
    }

    /// A handle other threads use to wake this loop.
    pub fn notifier(&self) -> Notifier {
        Notifier(Arc::clone(&self.waker))
    }

    /// Starts listening on `addr` (port 0 picks a free port); returns the bound address.
    pub fn listen(&mut self, addr: SocketAddr) -> io::Result<(ListenerId, SocketAddr)> {
        self.register_listener(TcpListener::bind(addr)?)
    }

    /// Accepts connections on a listener the caller already bound (so a test can pick the
    /// port before anything runs). It is made non-blocking here.
    pub fn adopt_listener(
        &mut self,
        listener: std::net::TcpListener,
    ) -> io::Result<(ListenerId, SocketAddr)> {
        listener.set_nonblocking(true)?;
        self.register_listener(TcpListener::from_std(listener))
    }

    fn register_listener(
        &mut self,
        mut listener: TcpListener,
    ) -> io::Result<(ListenerId, SocketAddr)> {
        let local = listener.local_addr()?;
        let entry = self.sources.vacant_entry();
        let key = entry.key();
        self.poll.registry().register(&mut listener, Token(key), Interest::READABLE)?;
        entry.insert(Source::Listener(listener));
        Ok((ListenerId(key), local))
    }

    /// Starts a non-blocking connect. [`NetEvent::Connected`] or [`NetEvent::Closed`] follows.
    /// Frames sent before the connect completes are queued and go out once it does.
    pub fn connect(&mut self, addr: SocketAddr) -> io::Result<ConnId> {
        let outbound = self.connections - self.inbound;
        if outbound >= self.config.max_outbound {
            return Err(io::Error::other(format!(
                "outbound connection limit reached ({outbound} dialed connections open)"
            )));
        }
        let stream = TcpStream::connect(addr)?;
        self.insert_connection(stream, addr, Phase::Connecting)
    }

    /// [`EventLoop::connect`] from the local address `local` (port chosen by the kernel):
    /// a server dials from its own configured address, so a peer, a log line or a packet
    /// filter can tell which server dialed. `None`, or an unspecified address, binds nothing.
    pub fn connect_from(&mut self, local: Option<IpAddr>, addr: SocketAddr) -> io::Result<ConnId> {
        let Some(local) = local.filter(|ip| !ip.is_unspecified()) else {
            return self.connect(addr);
        };
        let outbound = self.connections - self.inbound;
        if outbound >= self.config.max_outbound {
            return Err(io::Error::other(format!(
                "outbound connection limit reached ({outbound} dialed connections open)"
            )));
        }
        let stream = dial_from(local, addr)?;
        self.insert_connection(stream, addr, Phase::Connecting)
    }

    fn insert_connection(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        phase: Phase,
    ) -> io::Result<ConnId> {
        let inbound = phase == Phase::Open;
        let entry = self.sources.vacant_entry();
        let id = ConnId::new(entry.key(), self.next_generation);
        self.next_generation = self.next_generation.wrapping_add(1);
        self.poll.registry().register(
            &mut stream,
            Token(entry.key()),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Source::Conn(Box::new(Connection {
            id,
            stream,
            peer,
            phase,
            decoder: Decoder::new(self.config.max_body_len),
            out: Outbound::new(self.config.outbound_limit_bytes),
            dirty: false,
            pending_read: false,
            inbound,
        })));
        self.connections += 1;
        if inbound {
            self.inbound += 1;
        }
        Ok(id)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Connection> {
        match self.sources.get_mut(id.index()) {
            Some(Source::Conn(conn)) if conn.id == id => Some(conn),
            _ => None,
        }
    }

    /// Whether `conn` is still open (or connecting).
    pub fn is_open(&self, conn: ConnId) -> bool {
        matches!(self.sources.get(conn.index()), Some(Source::Conn(c)) if c.id == conn)
    }

    /// The remote address of `conn`.
    pub fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        match self.sources.get(conn.index()) {
            Some(Source::Conn(c)) if c.id == conn => Some(c.peer),
            _ => None,
        }
    }

    /// Sets the largest frame body `conn` accepts from now on, at most the loop's
    /// `max_body_len`. Upper layers keep unauthenticated connections small this way.
    pub fn set_max_body_len(&mut self, conn: ConnId, max_body_len: u32) {
        let limit = max_body_len.min(self.config.max_body_len);
        if let Some(connection) = self.conn_mut(conn) {
            connection.decoder.set_max_body_len(limit);
        }
    }

    /// Bytes queued for `conn` and not yet written.
    pub fn queued_bytes(&self, conn: ConnId) -> Option<usize> {
        match self.sources.get(conn.index()) {
            Some(Source::Conn(c)) if c.id == conn => Some(c.out.queued_bytes()),
            _ => None,
        }
    }

    /// Connections open now.
    pub fn connection_count(&self) -> usize {
        self.connections
    }

    /// Queues a frame for `conn`. It is written at the start of the next [`EventLoop::poll`].
    /// A body longer than the loop's `max_body_len` is refused ([`SendError::TooLarge`]).
    pub fn send(
        &mut self,
        conn: ConnId,
        priority: Priority,
        kind: u16,
        request_id: u64,
        body: &[u8],
    ) -> Result<(), SendError> {
        let max = self.config.max_body_len as usize;
        if body.len() > max {
            // The peer would close the connection on it: refuse here, with the sizes.
            return Err(SendError::TooLarge { len: body.len(), max });
        }
        let connection = self.conn_mut(conn).ok_or(SendError::Closed)?;
        connection.out.push_frame(priority, kind, request_id, body)?;
        if !connection.dirty {
            connection.dirty = true;
            self.dirty.push(conn);
        }
        Ok(())
    }

    /// Queues `frame` for `conn` as [`EventLoop::send`] does, taking it: a large body is
    /// queued without a copy, and a body checksum computed ahead
    /// ([`Frame::checksummed`]) is used as it is.
    pub fn send_frame(
        &mut self,
        conn: ConnId,
        priority: Priority,
        frame: Frame,
    ) -> Result<(), SendError> {
        let max = self.config.max_body_len as usize;
        if frame.body.len() > max {
            return Err(SendError::TooLarge { len: frame.body.len(), max });
        }
        let connection = self.conn_mut(conn).ok_or(SendError::Closed)?;
        connection.out.push_owned(priority, frame)?;
        if !connection.dirty {
            connection.dirty = true;
            self.dirty.push(conn);
        }
        Ok(())
    }

    /// Closes `conn` after one attempt to write what is queued (so a refusal message sent just
    /// before reaches the peer). [`NetEvent::Closed`] with [`CloseReason::Local`] follows from
    /// the next `poll`. Closing a dead id does nothing.
    pub fn close(&mut self, conn: ConnId, reason: impl Into<String>) {
        let Some(connection) = self.conn_mut(conn) else { return };
        if connection.phase == Phase::Open {
            // Best effort: the close happens whatever this returns.
            let _ = connection.out.flush(&mut connection.stream);
        }
        self.teardown(conn, CloseReason::Local(reason.into()));
    }

    /// The one place a connection is torn down: deregister, drop, report.
    fn teardown(&mut self, conn: ConnId, reason: CloseReason) {
        let index = conn.index();
        let is_this = matches!(self.sources.get(index), Some(Source::Conn(c)) if c.id == conn);
        if !is_this {
            return;
        }
        if let Source::Conn(mut connection) = self.sources.remove(index) {
            if let Err(err) = self.poll.registry().deregister(&mut connection.stream) {
                debug!("deregister {conn} failed: {err}");
            }
            self.connections -= 1;
            if connection.inbound {
                self.inbound -= 1;
            }
            debug!("{conn} ({}) closed: {reason}", connection.peer);
        }
        self.pending.push(NetEvent::Closed { conn, reason });
    }

    /// Arms a timer; [`NetEvent::Timer`] with `token` is returned by the first `poll` at or
    /// after `deadline`.
    pub fn set_timer(&mut self, deadline: Instant, token: u64) -> TimerId {
        self.timers.insert(deadline, token)
    }

    /// Disarms a timer; returns whether it was still armed.
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        self.timers.cancel(id)
    }

    /// Delivers `signals` (SIGTERM, SIGINT, ...) as [`NetEvent::Signal`] instead of their
    /// default action. Through a self-pipe, so the handler stays async-signal-safe.
    pub fn watch_signals(&mut self, signals: &[i32]) -> io::Result<()> {
        for &signal in signals {
            let (read, write) = std::os::unix::net::UnixStream::pair()?;
            read.set_nonblocking(true)?;
            signal_hook::low_level::pipe::register(signal, write)?;
            let mut pipe = UnixStream::from_std(read);
            let entry = self.sources.vacant_entry();
            self.poll.registry().register(&mut pipe, Token(entry.key()), Interest::READABLE)?;
            entry.insert(Source::Signal { pipe, signal });
        }
        Ok(())
    }

    /// Writes queued output, waits for readiness (at most `max_wait`, less if a timer is due),
    /// handles it, and appends what happened to `events`.
    pub fn poll(
        &mut self,
        events: &mut Vec<NetEvent>,
        max_wait: Option<Duration>,
    ) -> io::Result<()> {
        self.flush_dirty();
        events.append(&mut self.pending);
        self.readable.append(&mut self.held);

        let mut timeout = max_wait;
        if let Some(deadline) = self.timers.next_deadline() {
            let until = deadline.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(until, |t| t.min(until)));
        }
        if !events.is_empty() || !self.readable.is_empty() {
            timeout = Some(Duration::ZERO);
        }
        match self.poll.poll(&mut self.mio_events, timeout) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }

        let ready: Vec<(Token, bool, bool)> = self
            .mio_events
            .iter()
            .map(|e| {
                let readable = e.is_readable() || e.is_read_closed() || e.is_error();
                let writable = e.is_writable() || e.is_write_closed() || e.is_error();
                (e.token(), readable, writable)
            })
            .collect();
        for (token, readable, writable) in ready {
            self.dispatch(token, readable, writable, events);
        }

        // Connections whose read budget ran out last time get their next turn now.
        for conn in std::mem::take(&mut self.readable) {
            if let Some(connection) = self.conn_mut(conn) {
                connection.pending_read = false;
                self.read(conn, events);
            }
        }

        let now = Instant::now();
        while let Some((id, token)) = self.timers.pop_expired(now) {
            events.push(NetEvent::Timer { id, token });
        }
        events.append(&mut self.pending);
        Ok(())
    }

    fn dispatch(
        &mut self,
        token: Token,
        readable: bool,
        writable: bool,
        events: &mut Vec<NetEvent>,
    ) {
        if token == WAKER_TOKEN {
            events.push(NetEvent::Woken);
            return;
        }
        match self.sources.get_mut(token.0) {
            Some(Source::Listener(_)) => self.accept(ListenerId(token.0)),
            Some(Source::Signal { pipe, signal }) => {
                let signal = *signal;
                drain_pipe(pipe);
                events.push(NetEvent::Signal(signal));
            }
            Some(Source::Conn(connection)) => {
                let conn = connection.id;
                if writable {
                    self.write_ready(conn);
                }
                if readable {
                    self.read(conn, events);
                }
            }
            // The source was closed earlier in this batch: a spurious event.
            None => {}
        }
    }

    fn accept(&mut self, listener: ListenerId) {
        loop {
            let Some(Source::Listener(socket)) = self.sources.get_mut(listener.0) else { return };
            match socket.accept() {
                Ok((stream, peer)) => {
                    if self.inbound >= self.config.max_connections {
                        if let Some(left_out) = self.refusal_log.allow(Instant::now()) {
                            warn!(
                                "refusing connection from {peer}: limit of {} accepted \
                                 connections reached ({left_out} more refused since the last line)",
                                self.config.max_connections
                            );
                        }
                        drop(stream);
                        continue;
                    }
                    if let Err(err) = stream.set_nodelay(true) {
                        debug!("set_nodelay for {peer} failed: {err}");
                    }
                    match self.insert_connection(stream, peer, Phase::Open) {
                        Ok(conn) => self.pending.push(NetEvent::Accepted { listener, conn, peer }),
                        Err(err) => warn!("registering connection from {peer} failed: {err}"),
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // EMFILE and friends: log and wait for the next readiness.
                    warn!("accept failed: {err}");
                    return;
                }
            }
        }
    }

    fn write_ready(&mut self, conn: ConnId) {
        let Some(connection) = self.conn_mut(conn) else { return };
        if connection.phase == Phase::Connecting {
            match connect_result(&connection.stream) {
                Ok(false) => return, // spurious: still connecting
                Ok(true) => {
                    connection.phase = Phase::Open;
                    if let Err(err) = connection.stream.set_nodelay(true) {
                        debug!("set_nodelay for {} failed: {err}", connection.peer);
                    }
                    self.pending.push(NetEvent::Connected { conn });
                }
                Err(err) => {
                    self.teardown(conn, CloseReason::ConnectFailed(err.to_string()));
                    return;
                }
            }
        }
        self.flush(conn);
    }

    fn flush_dirty(&mut self) {
        for conn in std::mem::take(&mut self.dirty) {
            if let Some(connection) = self.conn_mut(conn) {
                connection.dirty = false;
                if connection.phase == Phase::Open {
                    self.flush(conn);
                }
            }
        }
    }

    fn flush(&mut self, conn: ConnId) {
        let Some(connection) = self.conn_mut(conn) else { return };
        match connection.out.flush(&mut connection.stream) {
            Ok(_) => {
                if connection.out.take_writable() {
                    self.pending.push(NetEvent::Writable { conn });
                }
            }
            Err(err) => self.teardown(conn, CloseReason::Io(err.to_string())),
        }
    }

    fn read(&mut self, conn: ConnId, events: &mut Vec<NetEvent>) {
        let budget = self.config.read_budget_bytes;
        let Some(connection) = self.conn_mut(conn) else { return };
        if connection.phase == Phase::Connecting {
            // A refused connect shows up as read-closed/error; settle it on the write path.
            self.write_ready(conn);
            return;
        }
        match read_frames(connection, budget, events) {
            ReadOutcome::Drained => {}
            ReadOutcome::BudgetSpent => {
                if !connection.pending_read {
                    connection.pending_read = true;
                    self.readable.push(conn);
                }
            }
            ReadOutcome::Held => {
                if !connection.pending_read {
                    connection.pending_read = true;
                    self.held.push(conn);
                }
            }
            ReadOutcome::Close(reason) => {
                if let CloseReason::BadFrame(err) = &reason {
                    info!("closing {conn} from {}: bad frame: {err}", connection.peer);
                }
                self.teardown(conn, reason);
            }
        }
    }
}

/// Reads and decodes until `WouldBlock`, the end of the stream, a bad frame, or `budget`
/// bytes. Frames decoded before an error or EOF are still delivered. What was read before
/// (a pass that was held or ran out of budget) is decoded first.
fn read_frames(conn: &mut Connection, budget: usize, events: &mut Vec<NetEvent>) -> ReadOutcome {
    let mut read_total = 0;
    let mut decoded = 0;
    let mut decode_all = |conn: &mut Connection, events: &mut Vec<NetEvent>| loop {
        match conn.decoder.decode() {
            Ok(Some(frame)) => {
                decoded += 1;
                events.push(NetEvent::Frame { conn: conn.id, frame });
            }
            Ok(None) => return None,
            Err(FrameError::TooLarge { .. }) if decoded > 0 => return Some(ReadOutcome::Held),
            Err(err) => return Some(ReadOutcome::Close(CloseReason::BadFrame(err))),
        }
    };
    if let Some(outcome) = decode_all(conn, events) {
        return outcome;
    }
    loop {
        let buf = conn.decoder.read_buf();
        match conn.stream.read(buf) {
            Ok(0) => return ReadOutcome::Close(CloseReason::PeerClosed),
            Ok(n) => {
                conn.decoder.advance(n);
                read_total += n;
                if let Some(outcome) = decode_all(conn, events) {
                    return outcome;
                }
                if read_total >= budget {
                    return ReadOutcome::BudgetSpent;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return ReadOutcome::Close(CloseReason::Io(err.to_string())),
        }
    }
}

/// A non-blocking TCP connect to `addr` from a socket bound to `local`.
fn dial_from(local: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    use nix::errno::Errno;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect};
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = nix::sys::socket::socket(family, SockType::Stream, flags, None)?;
    // The port is chosen at connect, by the whole 4-tuple, as a plain connect's is: bound
    // at once it would be taken out of the port space for every use, starving or racing
    // listeners that bind later.
    if addr.is_ipv4() {
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(SocketAddr::new(local, 0)))?;
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) | Err(Errno::EINPROGRESS) => {}
        Err(err) => return Err(err.into()),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(fd)))
}

/// Whether a non-blocking connect has completed (`Ok(true)`), is still under way
/// (`Ok(false)`), or failed.
fn connect_result(stream: &TcpStream) -> io::Result<bool> {
    if let Some(err) = stream.take_error()? {
        return Err(err);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(err) => Err(err),
    }
}

fn drain_pipe(pipe: &mut UnixStream) {
    let mut buf = [0u8; 64];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}
