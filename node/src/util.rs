//! Small helpers several parts of the node need: wall-clock stamps (token
//! and grant expiry), operating-system randomness (grant and job ids, job
//! tokens) and a constant-time comparison for secrets.

use rand::RngCore;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// A random u64 from the operating system.
pub(crate) fn random_u64() -> u64 {
    rand::rngs::OsRng.next_u64()
}

/// `n` random bytes from the operating system, in hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether `written` (relative to `cwd`, or absolute) names the very file
/// at `carried` on this machine's disk (same device and inode), as make
/// would find it: `junk/../a.h` needs a directory `junk`.
pub fn same_file(cwd: &str, written: &str, carried: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(std::path::Path::new(cwd).join(written));
    let b = std::fs::metadata(carried);
    matches!((a, b), (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino())
}

/// Constant-time comparison: a secret's bytes must not leak by timing.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert_eq!(random_hex(16).len(), 32);
        assert_ne!(random_u64(), random_u64());
        assert_eq!(now_secs(), now_ms() / 1000);
    }

    #[test]
    fn a_path_names_the_same_file_only_as_make_would_find_it() {
        let t = tempfile::tempdir().unwrap();
        let cwd = t.path().to_str().unwrap();
        std::fs::create_dir(t.path().join("src")).unwrap();
        std::fs::write(t.path().join("src/a.h"), "x").unwrap();
        let carried = format!("{cwd}/src/a.h");
        assert!(same_file(cwd, "src/a.h", &carried));
        assert!(same_file(cwd, "src/../src/a.h", &carried));
        assert!(same_file("/elsewhere", &carried, &carried));
        // Lexically the same file, but `junk` is not there for make to go
        // through.
        assert!(!same_file(cwd, "junk/../src/a.h", &carried));
        assert!(!same_file(cwd, "src/b.h", &carried));
    }
}
