//! The cluster settings the layers above the group own, from `config.conf`: files and
//! blocks (`block_size`, `replication`), the meta-servers' log (`snapshot_entries`), all in
//! `[cluster]`; self-healing (`[heal]`), the lock service (`[locks]`) and what one client
//! may hold of the meta-servers (`[limits]`).
//!
//! The group layer parses the file and keeps what it does not own in
//! [`Config::sections`]; [`load`] reads the file once, has the group check its part and
//! checks the rest here, so a typo anywhere is an error that names its key (and, for a key
//! nobody owns, its line). Every server and tool loads its config this way.

use std::path::Path;
use std::time::Duration;

use meshfs_group::config::{CLUSTER_KEYS, TABLES, parse_size};
use meshfs_group::{Config, ConfigError, Role};
use serde::Deserialize;

/// The default block size: 64 MiB.
pub const DEFAULT_BLOCK_SIZE: u64 = 64 * 1024 * 1024;
/// Blocks are checksummed in segments of this size; a block size is a multiple of it.
pub const SEGMENT_SIZE: u64 = 64 * 1024;
/// Largest block size accepted.
pub const MAX_BLOCK_SIZE: u64 = 1024 * 1024 * 1024;
/// Highest replication factor accepted.
pub const MAX_REPLICATION: u8 = 16;

const _: () = assert!(DEFAULT_BLOCK_SIZE.is_multiple_of(SEGMENT_SIZE));
const _: () = assert!(DEFAULT_BLOCK_SIZE <= MAX_BLOCK_SIZE);
const _: () = assert!(SEGMENT_SIZE == crate::wire::SEGMENT_BYTES);

/// The settings of the layers above the group, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Block size of new files, bytes.
    pub block_size: u64,
    /// Default replication factor of new files.
    pub replication: u8,
    /// Meta-servers snapshot the namespace and compact their Raft log after this many entries.
    pub snapshot_entries: u64,
    /// Self-healing settings.
    pub heal: Heal,
    /// Lock service settings.
    pub locks: Locks,
    /// What one client may hold at once.
    pub limits: Limits,
}

/// What one client may hold of the meta-servers at once: the `[limits]` table. The leader
/// refuses, with a clear error, a request past one of them before proposing it; so servers
/// whose configs differ stay consistent (the state machine holds every client to fixed
/// ceilings of its own, which these may not pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests of one client the leader holds unanswered: changes proposed, reads
    /// waiting for their round, lock waits. Past it a request hears "unavailable, retry".
    pub requests_in_flight_per_client: usize,
    /// Lock requests of one client waiting in locks' queues.
    pub lock_waits_per_client: usize,
    /// Lock sessions one client may have open (at most
    /// [`crate::locks::MAX_LOCK_SESSIONS_PER_CLIENT`]).
    pub lock_sessions_per_client: usize,
    /// Inodes one request may make (the directories of `mkdir -p`).
    pub inodes_per_request: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            requests_in_flight_per_client: 4096,
            lock_waits_per_client: 1024,
            lock_sessions_per_client: 64,
            inodes_per_request: 1024,
        }
    }
}

/// Self-healing settings: the `[heal]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heal {
    /// A data-server down this long has its replicas replaced elsewhere.
    pub grace: Duration,
    /// Repair copy traffic into one data-server, bytes per second.
    pub repair_bytes_per_sec: u64,
    /// Copies one data-server takes part in at once, as source or target.
    pub repair_streams: usize,
    /// Each data-server re-reads its replicas at this rate (bytes per second); 0: never.
    pub scrub_bytes_per_sec: u64,
    /// A full scrub pass starts at most this often (the next waits the rest of it).
    pub scrub_interval: Duration,
    /// Replicas of blocks that no longer exist are deleted after this long.
    pub orphan_delay: Duration,
    /// Rebalance when two data-servers' used fractions differ by more than this many
    /// percentage points.
    pub balance_margin_percent: u32,
}

impl Default for Heal {
    fn default() -> Heal {
        Heal {
            grace: Duration::from_secs(300),
            repair_bytes_per_sec: 100 * MB,
            repair_streams: 2,
            scrub_bytes_per_sec: 8 * MB,
            scrub_interval: Duration::from_secs(7 * 24 * 3600),
            orphan_delay: Duration::from_secs(300),
            balance_margin_percent: 10,
        }
    }
}

/// Lock service settings: the `[locks]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locks {
    /// A session whose client sent no KeepAlive for this long expires, and its locks go.
    pub session_lease: Duration,
    /// A lock whose holder's session expired is not granted again for this long.
    pub lock_delay: Duration,
}

impl Default for Locks {
    fn default() -> Locks {
        Locks { session_lease: Duration::from_secs(12), lock_delay: Duration::from_secs(5) }
    }
}

/// A megabyte, as in MB/s.
const MB: u64 = 1_000_000;

/// Reads and checks the config at `path`: the group's part and these settings.
pub fn load(path: &Path) -> Result<(Config, Settings), ConfigError> {
    let (text, absolute) = meshfs_group::config::read_text(path)?;
    parse(&text, &absolute)
}

/// Checks config text as if read from `path`.
pub fn parse(text: &str, path: &Path) -> Result<(Config, Settings), ConfigError> {
    let config = Config::parse(text, path)?;
    let settings = Settings::of(&config).map_err(|err| with_line(err, text))?;
    Ok((config, settings))
}

impl Settings {
    /// The settings in a config the group parsed (checked again: cheap, and a config made
    /// by [`Config::parse`] alone has not been).
    pub fn of(config: &Config) -> Result<Settings, ConfigError> {
        let path = &config.path;
        let syntax = |message: String| ConfigError::Syntax { path: path.clone(), message };
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            path: path.clone(),
            field: field.to_string(),
            reason,
        };
        for key in config.sections.keys() {
            if !OWN_TABLES.contains(&key.as_str()) && !TABLES.contains(&key.as_str()) {
                let known = [TABLES, OWN_TABLES].concat().join("`, `");
                return Err(syntax(format!(
                    "unknown field `{key}`, expected one of `{known}` (a table or key at the top level)"
                )));
            }
        }
        let raw: RawSettings = toml::Value::Table(config.sections.clone())
            .try_into()
            .map_err(|err: toml::de::Error| syntax(err.message().to_string()))?;
        for key in raw.cluster.rest.keys() {
            if !CLUSTER_KEYS.contains(&key.as_str()) {
                let known = [CLUSTER_KEYS, OWN_CLUSTER_KEYS].concat().join("`, `");
                return Err(syntax(format!(
                    "unknown field `{key}` in [cluster], expected one of `{known}`"
                )));
            }
        }
        raw.validate(config, &invalid)
    }
}

/// The top-level tables these settings own.
const OWN_TABLES: &[&str] = &["heal", "locks", "limits"];
/// The keys of `[cluster]` these settings own.
const OWN_CLUSTER_KEYS: &[&str] = &["block_size", "replication", "snapshot_entries"];

/// A syntax error about a key gets the line it is on (the group's parse had the spans; the
/// sections it hands on do not).
fn with_line(err: ConfigError, text: &str) -> ConfigError {
    let ConfigError::Syntax { path, message } = err else { return err };
    let key = message.split('`').nth(1).unwrap_or_default();
    let line = text.lines().position(|l| {
        let l = l.trim_start();
        l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
            || l.trim_start_matches('[').trim_end_matches(']') == key
    });
    match line {
        Some(n) if !key.is_empty() => {
            ConfigError::Syntax { path, message: format!("{message} at line {}", n + 1) }
        }
        _ => ConfigError::Syntax { path, message },
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
struct RawCluster {
    block_size: Option<RawSize>,
    replication: Option<i64>,
    snapshot_entries: Option<u64>,
    /// The group's keys (and typos).
    #[serde(flatten)]
    rest: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
struct RawSettings {
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    heal: RawHeal,
    #[serde(default)]
    locks: RawLocks,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    requests_in_flight_per_client: Option<u64>,
    lock_waits_per_client: Option<u64>,
    lock_sessions_per_client: Option<u64>,
    inodes_per_request: Option<u64>,
}

impl RawLimits {
    fn validate(
        &self,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<Limits, ConfigError> {
        let default = Limits::default();
        let limit = |field: &str, value: Option<u64>, default: usize, max: usize| match value {
            None => Ok(default),
            Some(n) if n >= 1 && n <= max as u64 => Ok(n as usize),
            Some(n) => Err(invalid(field, format!("{n}: must be 1 to {max}"))),
        };
        Ok(Limits {
            requests_in_flight_per_client: limit(
                "limits.requests_in_flight_per_client",
                self.requests_in_flight_per_client,
                default.requests_in_flight_per_client,
                65_536,
            )?,
            lock_waits_per_client: limit(
                "limits.lock_waits_per_client",
                self.lock_waits_per_client,
                default.lock_waits_per_client,
                65_536,
            )?,
            lock_sessions_per_client: limit(
                "limits.lock_sessions_per_client",
                self.lock_sessions_per_client,
                default.lock_sessions_per_client,
                crate::locks::MAX_LOCK_SESSIONS_PER_CLIENT,
            )?,
            inodes_per_request: limit(
                "limits.inodes_per_request",
                self.inodes_per_request,
                default.inodes_per_request,
                crate::path::MAX_PATH_LEN / 2,
            )?,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeal {
    grace_secs: Option<u64>,
    repair_mbps: Option<u64>,
    repair_streams: Option<u64>,
    scrub_mbps: Option<u64>,
    scrub_interval_secs: Option<u64>,
    orphan_delay_secs: Option<u64>,
    balance_margin_percent: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocks {
    session_lease_ms: Option<u64>,
    lock_delay_ms: Option<u64>,
}

impl RawSettings {
    fn validate(
        self,
        config: &Config,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<Settings, ConfigError> {
        let c = &self.cluster;
        let block_size = match &c.block_size {
            None => DEFAULT_BLOCK_SIZE,
            Some(RawSize::Bytes(n)) => *n,
            Some(RawSize::Text(text)) => {
                parse_size(text).map_err(|r| invalid("cluster.block_size", r))?
            }
        };
        if block_size == 0
            || !block_size.is_multiple_of(SEGMENT_SIZE)
            || block_size > MAX_BLOCK_SIZE
        {
            return Err(invalid(
                "cluster.block_size",
                format!(
                    "{block_size} bytes: must be a non-zero multiple of {SEGMENT_SIZE} (64 KiB), at most 1 GiB"
                ),
            ));
        }
        let replication = c.replication.unwrap_or(2);
        if !(1..=i64::from(MAX_REPLICATION)).contains(&replication) {
            return Err(invalid(
                "cluster.replication",
                format!("{replication}: must be between 1 and {MAX_REPLICATION}"),
            ));
        }
        let replication = replication as u8;
        let dservers = config.servers_of(Role::DServer).count();
        if usize::from(replication) > dservers {
            return Err(invalid(
                "cluster.replication",
                format!(
                    "{replication} copies need at least {replication} data-servers, the config has {dservers}"
                ),
            ));
        }
        for (i, server) in config.servers_of(Role::DServer).enumerate() {
            if let Some(bytes) = server.capacity
                && bytes < block_size
            {
                return Err(invalid(
                    &format!("dserver[{}].capacity", i + 1),
                    format!("{bytes} bytes is less than one block ({block_size})"),
                ));
            }
        }
        let snapshot_entries = c.snapshot_entries.unwrap_or(10_000);
        if snapshot_entries < 16 {
            return Err(invalid(
                "cluster.snapshot_entries",
                format!("{snapshot_entries}: must be at least 16"),
            ));
        }
        let heal = self.heal.validate(invalid)?;
        let locks = self.locks.validate(invalid)?;
        let limits = self.limits.validate(invalid)?;
        Ok(Settings { block_size, replication, snapshot_entries, heal, locks, limits })
    }
}

impl RawHeal {
    fn validate(&self, invalid: &dyn Fn(&str, String) -> ConfigError) -> Result<Heal, ConfigError> {
        let default = Heal::default();
        let secs = |field: &str, value: Option<u64>, default: Duration| match value {
            None => Ok(default),
            Some(s) if s > 30 * 24 * 3600 => {
                Err(invalid(field, format!("{s}: at most 30 days (2592000)")))
            }
            Some(s) => Ok(Duration::from_secs(s)),
        };
        let grace = secs("heal.grace_secs", self.grace_secs, default.grace)?;
        let orphan_delay =
            secs("heal.orphan_delay_secs", self.orphan_delay_secs, default.orphan_delay)?;
        let rate = |field: &str, value: Option<u64>, default: u64, zero_ok: bool| match value {
            None => Ok(default),
            Some(0) if !zero_ok => Err(invalid(field, "must be at least 1".into())),
            Some(n) if n > 100_000 => Err(invalid(field, format!("{n}: at most 100000 MB/s"))),
            Some(n) => Ok(n * MB),
        };
        let repair_bytes_per_sec =
            rate("heal.repair_mbps", self.repair_mbps, default.repair_bytes_per_sec, false)?;
        let scrub_bytes_per_sec =
            rate("heal.scrub_mbps", self.scrub_mbps, default.scrub_bytes_per_sec, true)?;
        let scrub_interval = match self.scrub_interval_secs {
            None => default.scrub_interval,
            Some(s @ 1..=31_536_000) => Duration::from_secs(s),
            Some(s) => {
                return Err(invalid(
                    "heal.scrub_interval_secs",
                    format!("{s}: must be 1 to 31536000 (a year)"),
                ));
            }
        };
        let repair_streams = match self.repair_streams {
            None => default.repair_streams,
            Some(n @ 1..=64) => n as usize,
            Some(n) => return Err(invalid("heal.repair_streams", format!("{n}: must be 1 to 64"))),
        };
        let balance_margin_percent = match self.balance_margin_percent {
            None => default.balance_margin_percent,
            Some(n @ 1..=100) => n as u32,
            Some(n) => {
                return Err(invalid(
                    "heal.balance_margin_percent",
                    format!("{n}: must be 1 to 100"),
                ));
            }
        };
        Ok(Heal {
            grace,
            repair_bytes_per_sec,
            repair_streams,
            scrub_bytes_per_sec,
            scrub_interval,
            orphan_delay,
            balance_margin_percent,
        })
    }
}

impl RawLocks {
    fn validate(
        &self,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<Locks, ConfigError> {
        let default = Locks::default();
        let session_lease = match self.session_lease_ms {
            None => default.session_lease,
            Some(ms @ 300..=3_600_000) => Duration::from_millis(ms),
            Some(ms) => {
                return Err(invalid(
                    "locks.session_lease_ms",
                    format!("{ms}: must be 300 to 3600000 (an hour)"),
                ));
            }
        };
        let lock_delay = match self.lock_delay_ms {
            None => default.lock_delay,
            Some(ms @ 0..=600_000) => Duration::from_millis(ms),
            Some(ms) => {
                return Err(invalid(
                    "locks.lock_delay_ms",
                    format!("{ms}: at most 600000 (ten minutes)"),
                ));
            }
        };
        Ok(Locks { session_lease, lock_delay })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The group layer's test config: both layers' tests change it a line at a time.
    const GOOD: &str = include_str!("../../group-layer/testdata/good.conf");

    fn settings(text: &str) -> Result<Settings, ConfigError> {
        parse(text, Path::new("/etc/meshfs/config.conf")).map(|(_, settings)| settings)
    }

    fn error(text: &str) -> String {
        settings(text).expect_err("config should be refused").to_string()
    }

    #[test]
    fn a_good_config_has_the_defaults() {
        let s = settings(GOOD).unwrap();
        assert_eq!(
            (s.block_size, s.replication, s.snapshot_entries),
            (DEFAULT_BLOCK_SIZE, 2, 10_000)
        );
        assert_eq!((s.heal, s.locks), (Heal::default(), Locks::default()));
        assert_eq!(s.limits, Limits::default());
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: &[(&str, &str, &str)] = &[
            // (replace this, with this, expect this in the message)
            ("replication = 2", "replication = 3", "cluster.replication: 3 copies need at least 3"),
            ("replication = 2", "replication = 0", "cluster.replication: 0: must be between"),
            ("replication = 2", "replication = 2\nblock_size = \"100KiB\"", "cluster.block_size"),
            (
                "replication = 2",
                "replication = 2\nblock_size = \"2GiB\"",
                "cluster.block_size: 2147483648 bytes",
            ),
            (
                "capacity = 1073741824",
                "capacity = 65536",
                "dserver[2].capacity: 65536 bytes is less than one block",
            ),
            (
                "replication = 2",
                "replication = 2\nsnapshot_entries = 3",
                "cluster.snapshot_entries: 3",
            ),
            (
                "[[mserver]]",
                "[limits]\nrequests_in_flight_per_client = 0\n[[mserver]]",
                "limits.requests_in_flight_per_client: 0: must be 1 to 65536",
            ),
            (
                "[[mserver]]",
                "[limits]\nlock_sessions_per_client = 257\n[[mserver]]",
                "limits.lock_sessions_per_client: 257: must be 1 to 256",
            ),
            (
                "[[mserver]]",
                "[limits]\ninodes_per_request = 4096\n[[mserver]]",
                "limits.inodes_per_request: 4096: must be 1 to 2048",
            ),
            ("[[mserver]]", "[limits]\nlock_waits = 5\n[[mserver]]", "unknown field `lock_waits`"),
        ];
        for (from, to, expect) in cases {
            assert!(GOOD.contains(from), "case {from:?} does not apply");
            let message = error(&GOOD.replacen(from, to, 1));
            assert!(message.contains(expect), "for {to:?}: {message:?} lacks {expect:?}");
            assert!(message.contains("/etc/meshfs/config.conf"), "{message:?} lacks the file");
        }
    }

    #[test]
    fn the_locks_table_is_optional_and_checked() {
        assert_eq!(settings(GOOD).unwrap().locks, Locks::default());
        let text = GOOD.replacen(
            "[[mserver]]",
            "[locks]\nsession_lease_ms = 2000\nlock_delay_ms = 0\n\n[[mserver]]",
            1,
        );
        let locks = settings(&text).unwrap().locks;
        assert_eq!(locks.session_lease, Duration::from_secs(2));
        assert_eq!(locks.lock_delay, Duration::ZERO);
        let bad = GOOD.replacen("[[mserver]]", "[locks]\nsession_lease_ms = 10\n\n[[mserver]]", 1);
        assert!(error(&bad).contains("locks.session_lease_ms: 10: must be 300"), "{}", error(&bad));
        let bad = GOOD.replacen("[[mserver]]", "[locks]\nlease_ms = 10\n\n[[mserver]]", 1);
        assert!(error(&bad).contains("lease_ms"), "{}", error(&bad));
    }

    #[test]
    fn the_heal_table_is_optional_and_checked() {
        assert_eq!(settings(GOOD).unwrap().heal, Heal::default());
        let text = GOOD.replacen(
            "[[mserver]]",
            "[heal]\ngrace_secs = 5\nrepair_mbps = 40\nscrub_mbps = 0\nbalance_margin_percent = 3\n\n[[mserver]]",
            1,
        );
        let heal = settings(&text).unwrap().heal;
        assert_eq!(heal.grace, Duration::from_secs(5));
        assert_eq!((heal.repair_bytes_per_sec, heal.scrub_bytes_per_sec), (40_000_000, 0));
        assert_eq!((heal.balance_margin_percent, heal.repair_streams), (3, 2));
        assert_eq!(heal.scrub_interval, Duration::from_secs(7 * 24 * 3600), "a week by default");
        let text =
            GOOD.replacen("[[mserver]]", "[heal]\nscrub_interval_secs = 60\n\n[[mserver]]", 1);
        assert_eq!(settings(&text).unwrap().heal.scrub_interval, Duration::from_secs(60));
        let bad = GOOD.replacen("[[mserver]]", "[heal]\nscrub_interval_secs = 0\n\n[[mserver]]", 1);
        assert!(error(&bad).contains("scrub_interval_secs: 0: must be 1 to"), "{}", error(&bad));
        let bad = GOOD.replacen("[[mserver]]", "[heal]\nrepair_mbps = 0\n\n[[mserver]]", 1);
        assert!(error(&bad).contains("heal.repair_mbps: must be at least 1"), "{}", error(&bad));
        let bad = GOOD.replacen("[[mserver]]", "[heal]\ngrace = 5\n\n[[mserver]]", 1);
        assert!(error(&bad).contains("unknown field `grace`"), "{}", error(&bad));
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let text = GOOD.replacen("replication = 2", "replication = 2\nreplicaton = 3", 1);
        let line = 1 + text.lines().position(|l| l.starts_with("replicaton")).unwrap();
        let message = error(&text);
        assert!(message.contains("unknown field `replicaton`"), "{message}");
        assert!(message.contains(&format!("at line {line}")), "{message}");
        let message = error(&GOOD.replacen("[[client]]", "[[clients]]", 1));
        assert!(message.contains("unknown field `clients`"), "{message}");
        assert!(message.contains("line"), "{message}");
        let message =
            error(&GOOD.replacen("[[mserver]]", "[heel]\ngrace_secs = 1\n\n[[mserver]]", 1));
        assert!(message.contains("unknown field `heel`"), "{message}");
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let dir = meshfs_test_kit::TempDir::new("shipped-settings");
        let path = dir.join("config.conf");
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.conf"), &path).unwrap();
        meshfs_test_kit::write_private(
            dir.join("cluster.secret"),
            "a-secret-for-the-test-0123456789",
        );
        let (_, s) = load(&path).unwrap();
        assert_eq!((s.replication, s.block_size), (2, DEFAULT_BLOCK_SIZE));
        assert_eq!(s.locks, Locks::default(), "the shipped [locks] shows the defaults");
    }
}
