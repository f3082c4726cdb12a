//! Network partitions between loopback addresses, made with the kernel's packet filter
//! (nftables) and undone when dropped.
//!
//! Each [`Partition`] is an nftables table of its own, named after this process and a
//! counter (`meshfs_test_<pid>_<n>`), with one output-hook rule per direction cut. Dropping
//! it deletes the table, also when the test panics; a table left by a process that died
//! (kill -9 of the test runner) is deleted by the next partition made on the machine. Only
//! addresses of 127.0.0.0/8 may be named: no rule ever touches another interface.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "meshfs_test_";
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Packets between the two sides of a cut are dropped, both ways, until this is dropped.
#[derive(Debug)]
pub struct Partition {
    table: String,
}

fn nft(args: &[&str]) -> Result<String, String> {
    let out = Command::new("nft")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run nft (install nftables; run as root): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("nft {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Deletes the tables of test processes that are gone.
fn sweep_stale() {
    let Ok(tables) = nft(&["list", "tables", "inet"]) else { return };
    for name in tables.lines().filter_map(|l| l.strip_prefix("table inet ")) {
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid = rest.split('_').next().and_then(|p| p.parse::<i32>().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = nft(&["delete", "table", "inet", name]);
        }
    }
}

impl Partition {
    /// Cuts every link between an address of `a` and one of `b`, both ways. Panics on an
    /// address outside 127.0.0.0/8; fails if nftables cannot be used.
    pub fn cut(a: &[Ipv4Addr], b: &[Ipv4Addr]) -> Result<Partition, String> {
        for ip in a.iter().chain(b) {
            assert!(
                ip.is_loopback(),
                "{ip} is not a loopback address: partitions are loopback only"
            );
        }
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let table = format!("{PREFIX}{}_{n}", std::process::id());
        nft(&["add", "table", "inet", &table])?;
        let partition = Partition { table };
        let chain = "{ type filter hook output priority 0; policy accept; }";
        nft(&["add", "chain", "inet", &partition.table, "out", chain])?;
        for x in a {
            for y in b {
                for (from, to) in [(x, y), (y, x)] {
                    let (from, to) = (from.to_string(), to.to_string());
                    let rule = ["ip", "saddr", &from, "ip", "daddr", &to, "drop"];
                    let mut args = vec!["add", "rule", "inet", &partition.table, "out"];
                    args.extend(rule);
                    nft(&args)?;
                }
            }
        }
        Ok(partition)
    }

    /// Cuts `one` off from every address in `rest`.
    pub fn isolate(one: Ipv4Addr, rest: &[Ipv4Addr]) -> Result<Partition, String> {
        let others: Vec<Ipv4Addr> = rest.iter().copied().filter(|ip| *ip != one).collect();
        Partition::cut(&[one], &others)
    }

    /// Ends the partition (as dropping it does), saying whether the rules could be removed.
    pub fn heal(mut self) -> Result<(), String> {
        let table = std::mem::take(&mut self.table);
        nft(&["delete", "table", "inet", &table]).map(|_| ())
    }

    /// The table's name, to look at with `nft list table inet NAME`.
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if !self.table.is_empty()
            && let Err(err) = nft(&["delete", "table", "inet", &self.table])
        {
            eprintln!("could not remove partition {}: {err}", self.table);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// Whether an echo at `to` answers a dial from 127.0.0.1 (the kernel's source address
    /// for loopback) within 300 ms.
    fn answers(to: std::net::SocketAddr) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&to, Duration::from_millis(300)) else {
            return false;
        };
        stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        stream.write_all(b"x").is_ok() && stream.read(&mut [0u8; 1]).is_ok_and(|n| n == 1)
    }

    #[test]
    fn a_cut_drops_packets_between_its_sides_and_is_gone_when_dropped() {
        let to = TcpListener::bind("127.0.0.9:0").unwrap();
        let addr = to.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            for stream in to.incoming().take(2) {
                let mut s = stream.unwrap();
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).is_ok() {
                    let _ = s.write_all(&b);
                }
            }
        });
        let here: Ipv4Addr = "127.0.0.1".parse().unwrap();
        let there: Ipv4Addr = "127.0.0.9".parse().unwrap();
        assert!(answers(addr), "open before the cut");
        let cut = Partition::cut(&[here], &[there]).unwrap();
        let table = cut.table().to_string();
        assert!(nft(&["list", "table", "inet", &table]).unwrap().contains("127.0.0.9"));
        assert!(!answers(addr), "cut");
        drop(cut);
        assert!(nft(&["list", "table", "inet", &table]).is_err(), "the table is gone");
        assert!(answers(addr), "open again");
        echo.join().unwrap();
    }

    #[test]
    #[should_panic(expected = "not a loopback address")]
    fn only_loopback_addresses_may_be_cut() {
        let _ = Partition::cut(&["10.0.0.1".parse().unwrap()], &["127.0.0.1".parse().unwrap()]);
    }
}
