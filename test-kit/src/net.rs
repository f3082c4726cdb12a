//! Listeners the test binds before anything starts: their ports are the test's, and no other
//! process can take one between choosing it and using it (as binding, dropping and letting a
//! server bind later would allow).

use std::net::{SocketAddr, TcpListener};

/// `count` listeners on distinct free loopback ports, held bound.
pub fn listeners(count: usize) -> Vec<TcpListener> {
    (0..count)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"))
        })
        .collect()
}

/// The address of each listener.
pub fn addrs(listeners: &[TcpListener]) -> Vec<SocketAddr> {
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap_or_else(|e| panic!("a bound listener has an address: {e}")))
        .collect()
}

/// `count` distinct free ports for servers that run as processes and bind themselves: all
/// are held until all are chosen, so none is handed out twice, but another process could
/// take one before the server binds it. Prefer [`listeners`] with an in-process server.
pub fn free_ports(count: usize) -> Vec<u16> {
    addrs(&listeners(count)).iter().map(SocketAddr::port).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_distinct_and_bound() {
        let held = listeners(3);
        let mut ports: Vec<u16> = addrs(&held).iter().map(|a| a.port()).collect();
        ports.dedup();
        assert_eq!(ports.len(), 3);
        assert!(TcpListener::bind(addrs(&held)[0]).is_err(), "still bound");
    }
}
