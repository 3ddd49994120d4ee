//! Unpacking a toolchain archive that came from outside: a peer, an sccache
//! client's upload, a custom toolchain named in a config.
//!
//! The node unpacks as its own user (root on most builders), so an archive
//! is hostile until proven otherwise: every entry is checked against what
//! the archive itself made before it, and nothing is ever written through a
//! path the archive did not make a directory. Refused: absolute or `..`
//! paths, an entry below a symlink or a file of the archive, an entry that
//! appears twice (a symlink `x` followed by a file `x` would otherwise
//! write through the link), hard links, devices, FIFOs and every other
//! type; and archives past [`Limits`] (a zstd bomb of a few kilobytes
//! unpacks to gigabytes of zeros). Files are created with `O_EXCL |
//! O_NOFOLLOW` as a second line of defence, with modes `0444`/`0555` only
//! (no set-uid bit, nothing writable).
//!
//! The checks ([`Checker`]) and the decoding ([`walk`]) are apart from the
//! writing ([`Sink`]), so that the fuzzer drives all of the decoding at
//! memory speed ([`check_archive`]) and the node the very same code onto
//! the disk ([`unpack_archive`]).

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// Bounds on what one archive may unpack to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Entries (files, directories, symlinks).
    pub entries: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// A toolchain's bounds: a Rust toolchain for one target unpacks to about
/// 1 GiB in a few thousand files, gcc and clang to a few hundred MiB.
pub(crate) const LIMITS: Limits = Limits {
    entries: 200_000,
    bytes: 4 << 30,
};

/// Longest symlink target kept (Linux's `PATH_MAX`).
const LINK_MAX: usize = 4096;
/// Longest entry name, and the most directories in one.
const PATH_MAX: usize = 4096;
const DEPTH_MAX: usize = 256;

/// What the archive made at a path so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Made {
    Dir,
    File,
    Symlink,
}

/// The entries of one archive, checked one by one against what the archive
/// made before them.
pub(crate) struct Checker {
    made: HashMap<PathBuf, Made>,
    entries: u64,
    bytes: u64,
    limits: Limits,
}

/// One checked entry, at a clean relative path.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A directory (made if not made yet).
    Dir,
    /// A regular file of `size` bytes; `exec` if any execute bit was set.
    File {
        size: u64,
        exec: bool,
    },
    Symlink(PathBuf),
}

/// Where checked entries go.
pub(crate) trait Sink {
    /// Make directory `rel` (its parent exists: made before).
    fn dir(&mut self, rel: &Path) -> io::Result<()>;
    /// Make file `rel` from exactly the bytes `content` gives.
    fn file(&mut self, rel: &Path, exec: bool, content: &mut dyn Read) -> io::Result<u64>;
    fn symlink(&mut self, rel: &Path, target: &Path) -> io::Result<()>;
}

impl Checker {
    pub fn new(limits: Limits) -> Checker {
        Checker {
            made: HashMap::new(),
            entries: 0,
            bytes: 0,
            limits,
        }
    }

    /// Check an entry: its clean path and what it is, or why it is refused.
    /// The directories it needs that the archive has not made yet are
    /// returned first, in order (an archive may name `a/b/c` before `a/b`).
    pub fn check(
        &mut self,
        raw: &Path,
        kind: tar::EntryType,
        mode: u32,
        size: u64,
        link: Option<&Path>,
    ) -> Result<Option<(Vec<PathBuf>, PathBuf, Item)>> {
        if raw.as_os_str().len() > PATH_MAX || raw.components().count() > DEPTH_MAX {
            bail!("archive entry name too long or too deep");
        }
        let mut rel = PathBuf::new();
        for c in raw.components() {
            match c {
                Component::Normal(n) => rel.push(n),
                Component::CurDir | Component::RootDir => {}
                _ => bail!("archive entry {} escapes the root", raw.display()),
            }
        }
        if rel.as_os_str().is_empty() {
            return Ok(None);
        }
        self.entries += 1;
        if self.entries > self.limits.entries {
            bail!("archive has more than {} entries", self.limits.entries);
        }
        let mut parents = Vec::new();
        for a in rel
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
        {
            match self.made.get(a) {
                Some(Made::Dir) => break,
                Some(Made::Symlink) => {
                    bail!("archive entry {} goes through a symlink", raw.display())
                }
                Some(Made::File) => bail!("archive entry {} goes through a file", raw.display()),
                None => parents.push(a.to_path_buf()),
            }
        }
        parents.reverse();
        let item = match kind {
            tar::EntryType::Directory => Item::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.bytes = self.bytes.saturating_add(size);
                if self.bytes > self.limits.bytes {
                    bail!("archive unpacks to more than {} bytes", self.limits.bytes);
                }
                Item::File {
                    size,
                    exec: mode & 0o111 != 0,
                }
            }
            tar::EntryType::Symlink => {
                let target = link.context("symlink without target")?;
                let len = target.as_os_str().len();
                if len == 0 || len > LINK_MAX {
                    bail!("archive entry {} has a bad link target", raw.display());
                }
                Item::Symlink(target.to_path_buf())
            }
            other => bail!(
                "archive entry {} has unsupported type {other:?}",
                raw.display()
            ),
        };
        let made = match &item {
            Item::Dir => Made::Dir,
            Item::File { .. } => Made::File,
            Item::Symlink(_) => Made::Symlink,
        };
        match self.made.get(&rel) {
            // A directory named again is the same directory.
            Some(Made::Dir) if made == Made::Dir => return Ok(None),
            Some(_) => bail!("archive entry {} appears twice", raw.display()),
            None => {}
        }
        for p in &parents {
            self.made.insert(p.clone(), Made::Dir);
        }
        self.made.insert(rel.clone(), made);
        Ok(Some((parents, rel, item)))
    }
}

/// The archive's bytes, decompressed: zstd, gzip (sccache's toolchains) or
/// plain tar, as its first bytes say; at most `max` of them are read.
fn decoded<'a, R: io::BufRead + 'a>(mut src: R, max: u64) -> Result<Box<dyn Read + 'a>> {
    let head = src.fill_buf()?;
    let reader: Box<dyn Read + 'a> = if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::Decoder::with_buffer(src)?)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::GzDecoder::new(src))
    } else {
        Box::new(src)
    };
    Ok(Box::new(reader.take(max)))
}

/// The most tar bytes read for an archive: its content bound, plus a
/// header and padding per entry.
fn stream_max(limits: Limits) -> u64 {
    limits
        .bytes
        .saturating_add(limits.entries.saturating_mul(3 * 512))
        .saturating_add(1 << 20)
}

/// The bound on a GNU long name or link, or on a PAX header.
const META_MAX: u64 = 64 << 10;

/// A first pass over the raw headers, before anything is read into memory
/// or written: the tar crate reads a GNU long name or a PAX header whole
/// before the entry it belongs to, so each is bounded here; every entry's
/// declared size counts towards the byte bound (a directory declaring a
/// terabyte would otherwise be skipped by decompressing all of it); and the
/// entries are counted.
fn prescan(reader: Box<dyn Read + '_>, limits: Limits) -> Result<()> {
    let mut ar = tar::Archive::new(reader);
    let (mut entries, mut bytes) = (0u64, 0u64);
    for entry in ar.entries()?.raw(true) {
        let entry = entry?;
        let size = entry.header().entry_size()?;
        let kind = entry.header().entry_type();
        let meta = matches!(
            kind,
            tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
                | tar::EntryType::XHeader
                | tar::EntryType::XGlobalHeader
        );
        if meta && size > META_MAX {
            bail!("archive has a long name or extended header of {size} bytes");
        }
        entries += 1;
        bytes = bytes.saturating_add(size);
        // Names and headers may double the count.
        if entries > limits.entries.saturating_mul(3) {
            bail!("archive has more than {} entries", limits.entries);
        }
        if bytes > limits.bytes {
            bail!("archive unpacks to more than {} bytes", limits.bytes);
        }
    }
    Ok(())
}

/// Decode an archive (read twice through `open`: [`prescan`], then entry by
/// entry) and hand each checked entry to `sink`.
pub(crate) fn walk<R: io::BufRead>(
    mut open: impl FnMut() -> io::Result<R>,
    limits: Limits,
    sink: &mut dyn Sink,
) -> Result<()> {
    prescan(decoded(open()?, stream_max(limits))?, limits)?;
    let mut ar = tar::Archive::new(decoded(open()?, stream_max(limits))?);
    let mut checker = Checker::new(limits);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let header = entry.header();
        let (kind, mode, size) = (
            header.entry_type(),
            header.mode().unwrap_or(0o644),
            entry.size(),
        );
        let link = match kind {
            tar::EntryType::Symlink => entry.link_name()?.map(|l| l.into_owned()),
            _ => None,
        };
        let Some((parents, rel, item)) = checker.check(&raw, kind, mode, size, link.as_deref())?
        else {
            continue;
        };
        let ctx = || format!("unpacking {}", rel.display());
        for p in &parents {
            sink.dir(p)
                .with_context(|| format!("unpacking {}", p.display()))?;
        }
        match item {
            Item::Dir => sink.dir(&rel).with_context(ctx)?,
            Item::File { size, exec } => {
                let got = sink
                    .file(&rel, exec, &mut (&mut entry).take(size))
                    .with_context(ctx)?;
                if got != size {
                    bail!("archive entry {} is cut short", rel.display());
                }
            }
            Item::Symlink(target) => sink.symlink(&rel, &target).with_context(ctx)?,
        }
    }
    Ok(())
}

/// Unpack the archive at `archive` into `dest`, a directory this process
/// made and nobody else writes to.
pub(crate) fn unpack_archive(archive: &Path, dest: &Path, limits: Limits) -> Result<()> {
    fs::create_dir_all(dest)?;
    walk(
        || fs::File::open(archive).map(io::BufReader::new),
        limits,
        &mut Disk {
            dest: dest.to_path_buf(),
        },
    )
}

/// Decode and check an archive without writing anything: what the fuzzer
/// runs. Returns the number of entries.
pub fn check_archive(src: &[u8], limits: Limits) -> Result<u64> {
    let mut count = Count(0);
    walk(|| Ok(src), limits, &mut count)?;
    Ok(count.0)
}

struct Count(u64);

impl Sink for Count {
    fn dir(&mut self, _: &Path) -> io::Result<()> {
        self.0 += 1;
        Ok(())
    }
    fn file(&mut self, _: &Path, _: bool, content: &mut dyn Read) -> io::Result<u64> {
        self.0 += 1;
        io::copy(content, &mut io::sink())
    }
    fn symlink(&mut self, _: &Path, _: &Path) -> io::Result<()> {
        self.0 += 1;
        Ok(())
    }
}

/// The filesystem under `dest`.
struct Disk {
    dest: PathBuf,
}

impl Sink for Disk {
    fn dir(&mut self, rel: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .mode(0o755)
            .create(self.dest.join(rel))
    }

    fn file(&mut self, rel: &Path, exec: bool, content: &mut dyn Read) -> io::Result<u64> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(if exec { 0o555 } else { 0o444 })
            .open(self.dest.join(rel))?;
        io::copy(content, &mut f)
    }

    fn symlink(&mut self, rel: &Path, target: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, self.dest.join(rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unpack `data` as the store does an archive file.
    fn unpack_bytes(data: &[u8], dest: &Path, limits: Limits) -> Result<()> {
        let file = dest.with_extension("archive");
        fs::write(&file, data).unwrap();
        unpack_archive(&file, dest, limits)
    }

    /// The names of a directory's entries.
    fn names(dir: &Path) -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// An archive of raw entries: (path, type, content or link target).
    fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if path.contains("bin/") { 0o4755 } else { 0o644 });
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_size(0);
                    let target = std::str::from_utf8(data).unwrap();
                    b.append_link(&mut h, path, target).unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    // Written by hand: the builder would clean `..` away.
                    h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
                    h.set_cksum();
                    b.append(&h, *data).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    use tar::EntryType::{Directory as D, Regular as F, Symlink as L};

    /// Each hostile archive is refused, and nothing is written outside the
    /// root (the "outside" directory next to it stays empty).
    #[test]
    fn hostile_archives_are_refused_and_write_nothing_outside() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let out = outside.to_str().unwrap().as_bytes();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "a symlink, then a file of the same name",
                tar_of(&[("x", L, out), ("x", F, b"pwned")]),
            ),
            (
                "a symlink, then a file below it",
                tar_of(&[("x", L, out), ("x/y", F, b"pwned")]),
            ),
            (
                "a symlink, then a directory of the same name, then a file below",
                tar_of(&[("x", L, out), ("x", D, b""), ("x/y", F, b"pwned")]),
            ),
            (
                "a relative symlink up, then a file below it",
                tar_of(&[("up", L, b".."), ("up/outside/y", F, b"pwned")]),
            ),
            ("a .. path", tar_of(&[("a/../../outside/y", F, b"pwned")])),
            (
                "a file twice",
                tar_of(&[("f", F, b"first"), ("f", F, b"second")]),
            ),
            (
                "a file, then a file below it",
                tar_of(&[("f", F, b"x"), ("f/y", F, b"pwned")]),
            ),
            ("a hard link", tar_of(&[("h", tar::EntryType::Link, out)])),
            ("a FIFO", tar_of(&[("p", tar::EntryType::Fifo, b"")])),
            ("a device", tar_of(&[("c", tar::EntryType::Char, b"")])),
        ];
        for (what, data) in cases {
            let root = t.path().join("root");
            let r = unpack_bytes(&data, &root, LIMITS);
            assert!(r.is_err(), "{what}: accepted");
            assert!(names(&outside).is_empty(), "{what}: wrote outside");
            fs::remove_dir_all(&root).unwrap();
            // The decoder alone refuses it too (what the fuzzer runs).
            assert!(check_archive(&data, LIMITS).is_err(), "{what}");
        }
    }

    #[test]
    fn archives_past_their_bounds_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let small = Limits {
            entries: 3,
            bytes: 10,
        };
        let many = tar_of(&[("a", F, b""), ("b", F, b""), ("c", F, b""), ("d", F, b"")]);
        let e = unpack_bytes(&many, &t.path().join("r1"), small).unwrap_err();
        assert!(format!("{e:#}").contains("more than 3 entries"), "{e:#}");
        let big = tar_of(&[("a", F, b"123456"), ("b", F, b"123456")]);
        let e = unpack_bytes(&big, &t.path().join("r2"), small).unwrap_err();
        assert!(format!("{e:#}").contains("more than 10 bytes"), "{e:#}");
        // A zstd bomb: 64 MiB of zeros in a few kilobytes, refused by the
        // byte bound before it is written out.
        let zeros = tar_of(&[("z", F, &vec![0u8; 64 << 20])]);
        let bomb = zstd::encode_all(&zeros[..], 19).unwrap();
        assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
        let bounded = Limits {
            entries: 10,
            bytes: 1 << 20,
        };
        let root = t.path().join("r3");
        assert!(unpack_bytes(&bomb, &root, bounded).is_err());
        assert!(!root.join("z").exists());
    }

    #[test]
    fn names_headers_and_declared_sizes_are_bounded_before_they_are_read() {
        // A GNU long name of 100 KiB (tar reads it whole into memory).
        let mut b = tar::Builder::new(Vec::new());
        let long = "a/".repeat(50 << 10) + "f";
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"x"[..]).unwrap();
        let e = check_archive(&b.into_inner().unwrap(), LIMITS).unwrap_err();
        assert!(format!("{e:#}").contains("long name"), "{e:#}");
        // A directory that declares a terabyte of content, skipped by
        // decompressing all of it were it not counted.
        let mut h = tar::Header::new_gnu();
        h.set_path("d").unwrap();
        h.set_entry_type(D);
        h.set_size(1 << 40);
        h.set_cksum();
        let e = check_archive(h.as_bytes(), LIMITS).unwrap_err();
        assert!(format!("{e:#}").contains("more than"), "{e:#}");
        // A path of 300 directories.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "d/".repeat(300) + "f", &b"x"[..])
            .unwrap();
        let e = check_archive(&b.into_inner().unwrap(), LIMITS).unwrap_err();
        assert!(format!("{e:#}").contains("too deep"), "{e:#}");
    }

    #[test]
    fn a_fair_archive_unpacks_with_safe_modes() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let data = tar_of(&[
            ("usr/bin/cc", F, b"#!cc"),
            ("usr/lib/libx.so.1", F, b"lib"),
            ("usr/lib/libx.so", L, b"libx.so.1"),
            ("usr/lib", D, b""),
            ("./etc/abs", L, b"/usr/lib/libx.so.1"),
            ("/usr/include/a.h", F, b"h"),
        ]);
        let root = t.path().join("root");
        unpack_bytes(&zstd::encode_all(&data[..], 1).unwrap(), &root, LIMITS).unwrap();
        assert_eq!(fs::read(root.join("usr/bin/cc")).unwrap(), b"#!cc");
        assert_eq!(
            fs::read_link(root.join("usr/lib/libx.so")).unwrap(),
            Path::new("libx.so.1")
        );
        assert_eq!(
            fs::read_link(root.join("etc/abs")).unwrap(),
            Path::new("/usr/lib/libx.so.1")
        );
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
        // Executable bits kept as 0555 (a set-uid bit dropped), the rest 0444.
        assert_eq!(mode("usr/bin/cc"), 0o555);
        assert_eq!(mode("usr/include/a.h"), 0o444);
        assert_eq!(check_archive(&data, LIMITS).unwrap(), 10);
    }
}
