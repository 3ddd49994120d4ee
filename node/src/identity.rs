//! Keys on disk: this node's libp2p identity (its peer id) and the office
//! admin's key files. Secret files are created with mode 0600 and written
//! atomically; a damaged key file is an error, never silently replaced.

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use libp2p_identity::{Keypair, PeerId};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use swarmcc_protocol::token::OfficeKey;

/// Write `data` to `path` with mode 0600, atomically, refusing to overwrite.
fn write_secret(path: &Path, data: &[u8]) -> Result<()> {
    if path.exists() {
        bail!("{} already exists; not overwriting a key", path.display());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::hard_link(&tmp, path).with_context(|| format!("creating {}", path.display()))?;
    std::fs::remove_file(&tmp)?;
    Ok(())
}

/// This node's key pair from `path`, created on first use.
pub(crate) fn node_keypair(path: &Path) -> Result<Keypair> {
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{} is not a valid node key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kp = Keypair::generate_ed25519();
            let bytes = kp.to_protobuf_encoding().context("encoding the node key")?;
            match write_secret(path, &bytes) {
                Ok(()) => Ok(kp),
                // Another process created it first: use theirs.
                Err(_) if path.exists() => node_keypair(path),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// This node's peer id.
pub fn node_peer_id(path: &Path) -> Result<PeerId> {
    Ok(node_keypair(path)?.public().to_peer_id())
}

/// Create an office: `dir/office.key` (secret, 0600) and `dir/office.pub`.
pub fn create_office(name: &str, dir: &Path) -> Result<OfficeKey> {
    if name.is_empty() || name.len() > 128 || name.contains(['\n', '"', '\\']) {
        bail!("office name must be 1 to 128 characters without quotes, backslashes or newlines");
    }
    let key = OfficeKey::generate(name);
    let text = format!(
        "# swarmcc office key: keep it secret; it signs every token of the office\nname = \"{name}\"\nsecret = \"{}\"\n",
        B64.encode(key.secret())
    );
    write_secret(&dir.join("office.key"), text.as_bytes())?;
    std::fs::write(dir.join("office.pub"), format!("{}\n", key.public()))?;
    Ok(key)
}

/// Read an office key file written by [`create_office`].
pub fn read_office_key(path: &Path) -> Result<OfficeKey> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        name: String,
        secret: String,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let f: File = toml::from_str(&text)
        .with_context(|| format!("{} is not an office key file", path.display()))?;
    let secret: [u8; 32] = B64
        .decode(f.secret.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{}: bad secret", path.display()))?;
    Ok(OfficeKey::from_secret(&f.name, secret))
}

/// Parse "90d", "12h", "30m", "45s" or plain seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('d') => (&s[..s.len() - 1], 86_400),
        Some('h') => (&s[..s.len() - 1], 3_600),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('s') => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad duration {s:?} (use e.g. 90d, 12h, 30m)"))?;
    n.checked_mul(mult)
        .with_context(|| format!("duration {s:?} overflows"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn node_key_is_created_once_private_and_stable() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("node.key");
        let a = node_peer_id(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(node_peer_id(&p).unwrap(), a, "the same id on every start");
        std::fs::write(&p, b"garbage").unwrap();
        assert!(
            node_peer_id(&p).is_err(),
            "a damaged key is an error, not replaced"
        );
    }

    #[test]
    fn office_files_round_trip_and_are_never_overwritten() {
        let t = tempfile::tempdir().unwrap();
        let k = create_office("acme", t.path()).unwrap();
        let key_file = t.path().join("office.key");
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = read_office_key(&key_file).unwrap();
        assert_eq!((back.name.as_str(), back.public()), ("acme", k.public()));
        let pubtext = std::fs::read_to_string(t.path().join("office.pub")).unwrap();
        assert_eq!(pubtext.trim(), k.public().to_string());
        assert!(create_office("acme", t.path()).is_err());
        assert!(create_office("bad\"name", &t.path().join("x")).is_err());
        assert_eq!(parse_duration_secs("90d").unwrap(), 90 * 86_400);
        assert_eq!(parse_duration_secs("3600").unwrap(), 3600);
        assert!(parse_duration_secs("5w").is_err());
    }
}
