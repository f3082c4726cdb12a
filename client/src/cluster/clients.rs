//! The operator's side of credentials, on a server host: the cluster secret made on first
//! start, and `meshfs client add | remove | rotate | list`, which edit the `[[client]]`
//! entries of the cluster config and write each client's own client config.
//!
//! An entry holds no key: a client's key is derived from the cluster secret, its id and the
//! entry's salt ([`meshfs_group::auth::client_key`]), so a new salt rotates it and removing
//! the entry revokes it. Servers re-read the entries while they run.
//!
//! Every change is checked by reading the whole config back before it is written.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use meshfs_group::{ClientId, Config};

use crate::access::client_config_text;
use crate::cluster::write_private;
use crate::error::ClientError;

fn fail(reason: String) -> ClientError {
    ClientError::Launch { program: "meshfs client".into(), reason }
}

/// `bytes` random bytes from the kernel, in hex.
fn random_hex(bytes: usize) -> Result<String, ClientError> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| fail(format!("cannot read /dev/urandom: {e}")))?;
    Ok(buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// If the config at `path` names a `secret_file` that does not exist yet, makes it: 32
/// random bytes in hex, readable by its owner only. Returns the file made.
pub fn ensure_secret(path: &Path) -> Result<Option<PathBuf>, ClientError> {
    let (text, absolute) = meshfs_group::config::read_text(path)?;
    let Ok(table) = toml::from_str::<toml::Table>(&text) else { return Ok(None) };
    let file = table.get("cluster").and_then(|c| c.get("secret_file")).and_then(|f| f.as_str());
    let Some(file) = file else { return Ok(None) };
    let file = absolute.parent().unwrap_or(Path::new(".")).join(file);
    if file.exists() {
        return Ok(None);
    }
    write_private(&file, &format!("{}\n", random_hex(32)?))?;
    Ok(Some(file))
}

/// Writes client `id`'s client config to `out`, private.
pub fn write_client_config(config: &Config, id: ClientId, out: &Path) -> Result<(), ClientError> {
    let client = config.client(id).ok_or(ClientError::UnknownClient(id))?;
    let key = String::from_utf8_lossy(&client.key);
    write_private(out, &client_config_text(config, id, &client.name, &key))
}

/// One `[[client]]` entry's place in the config text: its lines, id and name.
struct Entry {
    lines: std::ops::Range<usize>,
    id: u32,
    name: String,
}

fn entries(text: &str) -> Vec<Entry> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "[[client]]" {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < lines.len() && !lines[i].trim_start().starts_with('[') {
            i += 1;
        }
        let body = lines[start + 1..i].join("\n");
        if let Ok(table) = toml::from_str::<toml::Table>(&body) {
            let id = table.get("id").and_then(toml::Value::as_integer).unwrap_or(0);
            let name = table.get("name").and_then(toml::Value::as_str).unwrap_or_default();
            found.push(Entry {
                lines: start..i,
                id: u32::try_from(id).unwrap_or(0),
                name: name.to_string(),
            });
        }
    }
    found
}

/// Checks `text` as the config at `path` would be and writes it, keeping the file's mode.
fn replace_config(path: &Path, text: &str) -> Result<Config, ClientError> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let (config, _) = meshfs_core::settings::parse(text, &absolute)?;
    let next = absolute.with_extension("conf.new");
    let mode = std::fs::metadata(path).map(|m| m.permissions()).map_err(|e| fail(e.to_string()))?;
    std::fs::write(&next, text)
        .and_then(|()| std::fs::set_permissions(&next, mode))
        .and_then(|()| std::fs::rename(&next, path))
        .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
    Ok(config)
}

fn find<'a>(list: &'a [Entry], name: &str) -> Result<&'a Entry, ClientError> {
    list.iter().find(|e| e.name == name).ok_or_else(|| {
        fail(format!("no client named {name:?} in the config (see `meshfs client list`)"))
    })
}

fn read(path: &Path) -> Result<String, ClientError> {
    Ok(meshfs_group::config::read_text(path)?.0)
}

fn valid_name(name: &str) -> Result<(), ClientError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(fail(format!("client name {name:?}: 1 to 64 letters, digits, '-', '_' or '.'")))
    }
}

/// `meshfs client add NAME [--admin] [--uid N --gids A,B]`: a new entry with the next free id and a fresh salt; writes
/// the client's config to `out` (default `client-NAME.conf` beside the cluster config).
pub fn add(
    path: &Path,
    name: &str,
    who: &Who,
    out: Option<PathBuf>,
) -> Result<(ClientId, PathBuf), ClientError> {
    valid_name(name)?;
    let text = read(path)?;
    let config = Config::parse(&text, path)?;
    if config.clients.values().any(|c| c.name == name) {
        return Err(fail(format!("a client named {name:?} exists; remove or rotate it")));
    }
    let id = config.clients.keys().map(|c| c.0).max().unwrap_or(0) + 1;
    let salt = random_hex(16)?;
    let mut next = text.clone();
    if !next.ends_with('\n') {
        next.push('\n');
    }
    let _ = write!(next, "\n[[client]]\nid = {id}\nname = {name:?}\nsalt = {salt:?}\n");
    if who.admin {
        next.push_str("admin = true\n");
    }
    if let Some(uid) = who.uid {
        let _ = writeln!(next, "uid = {uid}");
    }
    if !who.gids.is_empty() {
        let _ = writeln!(next, "gids = {:?}", who.gids);
    }
    if who.trusted {
        next.push_str("trusted = true\n");
    }
    let config = replace_config(path, &next)?;
    let out = out.unwrap_or_else(|| config.base_dir().join(format!("client-{name}.conf")));
    write_client_config(&config, ClientId(id), &out)?;
    Ok((ClientId(id), out))
}

/// `meshfs client remove NAME`: its entry goes; servers refuse its next connection.
pub fn remove(path: &Path, name: &str) -> Result<ClientId, ClientError> {
    let text = read(path)?;
    let list = entries(&text);
    let entry = find(&list, name)?;
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| !entry.lines.contains(i))
        .map(|(_, l)| l)
        .collect();
    let config = replace_config(path, &(kept.join("\n") + "\n"))?;
    let id = ClientId(entry.id);
    if config.client(id).is_some() {
        return Err(fail(format!("client {name:?} is still in the config after removal")));
    }
    Ok(id)
}

/// `meshfs client rotate NAME`: a fresh salt, so a new key; writes the client's new config.
pub fn rotate(path: &Path, name: &str, out: Option<PathBuf>) -> Result<PathBuf, ClientError> {
    let text = read(path)?;
    let list = entries(&text);
    let entry = find(&list, name)?;
    let salt = random_hex(16)?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let block = &mut lines[entry.lines.clone()];
    let at = block.iter().position(|l| {
        let t = l.trim_start();
        t.starts_with("salt") || t.starts_with("key")
    });
    let line = format!("salt = {salt:?}");
    match at {
        Some(i) => block[i] = line,
        None => lines.insert(entry.lines.start + 1, line),
    }
    let config = replace_config(path, &(lines.join("\n") + "\n"))?;
    let out = out.unwrap_or_else(|| config.base_dir().join(format!("client-{name}.conf")));
    write_client_config(&config, ClientId(entry.id), &out)?;
    Ok(out)
}

/// What a new client is: an operator or not, and the user and groups it acts as.
#[derive(Debug, Default)]
pub struct Who {
    /// An operator.
    pub admin: bool,
    /// Its uid (default: its id).
    pub uid: Option<u32>,
    /// Its groups (default: its uid).
    pub gids: Vec<u32>,
    /// It may act for other users (a mount).
    pub trusted: bool,
}
