//! A blocking, authenticated connection from a client to one server.
//!
//! The client side of the group handshake (see `meshfs_group::message`): the client dials,
//! says who it is, checks that the server knows its key, proves it knows the key itself,
//! and then exchanges request/response frames. Every read has a deadline.
//!
//! It must not know the protocol's meaning: messages in, messages out.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use meshfs_core::wire::Message;
use meshfs_group::auth::{self, Side, Transcript};
use meshfs_group::membership::AUTHENTICATION_FAILED;
use meshfs_group::message::{GroupMessage, Identity};
use meshfs_group::rng::Rng;
use meshfs_group::{ClientId, FIRST_APP_KIND};
use meshfs_net::frame::{self, Decoder, Frame};

use crate::error::ClientError;

/// Who the client is: its id and key (from its client config, or a `[[client]]` entry of
/// the cluster config).
#[derive(Clone)]
pub struct Credentials {
    /// The client id.
    pub id: ClientId,
    /// The client's key.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("id", &self.id).finish_non_exhaustive()
    }
}

/// An authenticated connection to one server.
#[derive(Debug)]
pub struct Connection {
    addr: SocketAddr,
    stream: TcpStream,
    decoder: Decoder,
    server: Identity,
    next_request_id: u64,
    timeout: Duration,
}

impl Connection {
    /// Connects to `addr` and authenticates as `credentials` in cluster `cluster`, each step
    /// within `timeout`.
    pub fn open(
        addr: SocketAddr,
        cluster: &str,
        credentials: &Credentials,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| ClientError::Connect { addr, source })?;
        stream.set_nodelay(true).map_err(|source| ClientError::Io { addr, source })?;
        let mut conn = Connection {
            addr,
            stream,
            decoder: Decoder::new(frame::DEFAULT_MAX_BODY_LEN),
            server: Identity::Client { id: credentials.id },
            next_request_id: 1,
            timeout,
        };
        conn.handshake(cluster, credentials)?;
        Ok(conn)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets how long each later read or write may wait.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Who the server proved to be.
    pub fn server(&self) -> Identity {
        self.server
    }

    fn handshake(&mut self, cluster: &str, credentials: &Credentials) -> Result<(), ClientError> {
        let mut rng = Rng::from_seed(
            meshfs_group::rng::os_seed()
                .map_err(|source| ClientError::Io { addr: self.addr, source })?,
        );
        let me = Identity::Client { id: credentials.id };
        let nonce = rng.bytes32();
        self.send_group(&GroupMessage::Hello {
            cluster: cluster.to_string(),
            identity: me,
            incarnation: rng.u64(),
            nonce,
        })?;
        let (server, server_nonce) = match self.read_group()? {
            GroupMessage::Challenge { identity, nonce, .. } => (identity, nonce),
            other => return Err(self.protocol(format!("expected a challenge, got {other:?}"))),
        };
        let transcript = Transcript {
            cluster,
            dialer: me,
            acceptor: server,
            dialer_nonce: &nonce,
            acceptor_nonce: &server_nonce,
        };
        // This client proves itself first; the server proves itself only to a client that did.
        let my_proof = auth::prove(&credentials.key, Side::Dialer, &transcript);
        self.send_group(&GroupMessage::Proof { proof: my_proof })?;
        match self.read_group()? {
            GroupMessage::Welcome { proof } => {
                if !auth::verify(&credentials.key, Side::Acceptor, &transcript, &proof) {
                    return Err(ClientError::ServerAuth {
                        addr: self.addr,
                        server: server.to_string(),
                    });
                }
                self.server = server;
                Ok(())
            }
            other => Err(self.protocol(format!("expected welcome, got {other:?}"))),
        }
    }

    fn protocol(&self, detail: String) -> ClientError {
        ClientError::Protocol { addr: self.addr, detail }
    }

    fn send_group(&mut self, message: &GroupMessage) -> Result<(), ClientError> {
        self.write_frame(&Frame::new(message.kind(), 0, message.encode()))
    }

    fn write_frame(&mut self, frame: &Frame) -> Result<(), ClientError> {
        let mut bytes = Vec::with_capacity(frame.wire_len());
        frame.encode(&mut bytes);
        let addr = self.addr;
        self.stream
            .set_write_timeout(Some(self.timeout))
            .map_err(|source| ClientError::Io { addr, source })?;
        self.stream.write_all(&bytes).map_err(|source| ClientError::Io { addr, source })
    }

    /// Reads the next group message; a Refuse becomes [`ClientError::Refused`].
    fn read_group(&mut self) -> Result<GroupMessage, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let frame = self.read_frame(deadline)?;
        if frame.kind >= FIRST_APP_KIND {
            return Err(self.protocol(format!("message kind {} during the handshake", frame.kind)));
        }
        match GroupMessage::decode(frame.kind, &frame.body) {
            Ok(GroupMessage::Refuse { reason }) if reason == AUTHENTICATION_FAILED => {
                Err(ClientError::AuthFailed { addr: self.addr })
            }
            Ok(GroupMessage::Refuse { reason }) => {
                Err(ClientError::Refused { addr: self.addr, reason })
            }
            Ok(message) => Ok(message),
            Err(err) => Err(self.protocol(err.to_string())),
        }
    }

    fn read_frame(&mut self, deadline: Instant) -> Result<Frame, ClientError> {
        let addr = self.addr;
        loop {
            match self.decoder.decode() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(err) => return Err(self.protocol(format!("bad frame: {err}"))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout { addr, after: self.timeout });
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|source| ClientError::Io { addr, source })?;
            match self.stream.read(self.decoder.read_buf()) {
                Ok(0) => return Err(ClientError::Closed { addr }),
                Ok(n) => self.decoder.advance(n),
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout { addr, after: self.timeout });
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(ClientError::Io { addr, source }),
            }
        }
    }

    /// A fresh request id on this connection.
    pub fn next_request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    /// Sends `message` as request `request_id` without waiting (for streams).
    pub fn send(&mut self, message: &Message, request_id: u64) -> Result<(), ClientError> {
        self.write_frame(&message.to_frame(request_id))
    }

    /// Sends each (message, request id) without waiting, all in one write: a pipelined
    /// burst costs one system call, and the server reads it at once.
    pub fn send_all(&mut self, messages: &[(Message, u64)]) -> Result<(), ClientError> {
        let mut bytes = Vec::new();
        for (message, request_id) in messages {
            message.to_frame(*request_id).encode(&mut bytes);
        }
        let addr = self.addr;
        self.stream
            .set_write_timeout(Some(self.timeout))
            .map_err(|source| ClientError::Io { addr, source })?;
        self.stream.write_all(&bytes).map_err(|source| ClientError::Io { addr, source })
    }

    /// The next application message, with its request id, by `deadline`; group messages
    /// (a ping) are answered or skipped on the way.
    pub fn recv(&mut self, deadline: Instant) -> Result<(u64, Message), ClientError> {
        loop {
            let frame = self.read_frame(deadline)?;
            if frame.kind < FIRST_APP_KIND {
                match GroupMessage::decode(frame.kind, &frame.body) {
                    Ok(GroupMessage::Ping { seq }) => {
                        self.send_group(&GroupMessage::Pong { seq })?
                    }
                    Ok(GroupMessage::Refuse { reason }) => {
                        return Err(ClientError::Refused { addr: self.addr, reason });
                    }
                    _ => {}
                }
                continue;
            }
            return match Message::decode(&frame) {
                Ok(message) => Ok((frame.request_id, message)),
                Err(err) => Err(self.protocol(err.to_string())),
            };
        }
    }

    /// Sends `request` and waits for its answer; an error reply becomes
    /// [`ClientError::Server`].
    pub fn call(&mut self, request: &Message) -> Result<Message, ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.write_frame(&request.to_frame(request_id))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.recv(deadline)? {
                // An answer to an earlier request that timed out: not ours.
                (id, _) if id != request_id => {}
                (_, Message::Error { code, message }) => {
                    return Err(ClientError::Server { addr: self.addr, code, message });
                }
                (_, message) => return Ok(message),
            }
        }
    }
}
