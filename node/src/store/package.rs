//! Packaging a compiler's closure.
//!
//! The archive must be the same bytes on every machine with the same files,
//! so that two clients with the same compiler produce the same id and the
//! swarm stores it once: entries are sorted, with mtime 0, uid/gid 0, no user
//! names and normalized modes. Symlinks along every path are kept as symlinks
//! (e.g. Debian's `/lib -> usr/lib`), so the archive unpacked as `/` resolves
//! exactly as the host did.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use swarmcc_protocol::{Hash32, ToolchainId};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File { src: PathBuf, exec: bool },
    Symlink(PathBuf),
}

/// What packaging produced.
#[derive(Debug, Clone)]
pub struct PackageOutcome {
    pub id: ToolchainId,
    pub size: u64,
    /// The host files packaged (for change detection: path, size, mtime).
    pub files: Vec<(PathBuf, u64, i64)>,
    /// The symbolic links followed on the way (path, target): pointed
    /// elsewhere (`update-alternatives`, a `cc` link from gcc to clang),
    /// they make another compiler of the same files.
    pub links: Vec<(PathBuf, PathBuf)>,
}

/// Package the compiler at `compiler` (absolute path) into `out` (a
/// `.tar.zst`). Returns the id and the list of host files it depends on.
pub fn package_compiler(compiler: &Path, out: &Path) -> Result<PackageOutcome> {
    if !compiler.is_absolute() {
        bail!("compiler path must be absolute: {}", compiler.display());
    }
    let mut tree = Tree::default();
    let mut wanted: Vec<PathBuf> = vec![compiler.to_path_buf()];
    let kind = compiler_kind(compiler);
    match kind {
        Kind::Gcc => {
            for prog in [
                "cc1",
                "cc1plus",
                "cc1obj",
                "collect2",
                "lto-wrapper",
                "lto1",
                "as",
            ] {
                if let Some(p) = print_path(compiler, &format!("-print-prog-name={prog}")) {
                    wanted.push(p);
                }
            }
            for file in ["liblto_plugin.so", "specs"] {
                if let Some(p) = print_path(compiler, &format!("-print-file-name={file}")) {
                    wanted.push(p);
                }
            }
        }
        Kind::Clang => {
            if let Some(dir) = print_path(compiler, "-print-resource-dir") {
                let inc = dir.join("include");
                if inc.is_dir() {
                    wanted.push(inc);
                }
            }
            if let Some(p) = find_in_path("as") {
                wanted.push(p);
            }
            // clang finds libstdc++'s headers only after it detects a GCC
            // installation, by its crtbegin.o: carry those markers.
            if let Some(dir) = selected_gcc_installation(compiler) {
                for marker in [
                    "crtbegin.o",
                    "crtbeginS.o",
                    "crtbeginT.o",
                    "crtend.o",
                    "crtendS.o",
                ] {
                    let p = dir.join(marker);
                    if p.is_file() {
                        wanted.push(p);
                    }
                }
            }
        }
    }
    // The C.UTF-8 locale, so that diagnostics quote with the same characters
    // as on a UTF-8 terminal (jobs map UTF-8 locales to it). Not built into
    // glibc: Debian ships it as files.
    let c_utf8 = Path::new("/usr/lib/locale/C.utf8");
    if c_utf8.is_dir() {
        wanted.push(c_utf8.to_path_buf());
    }
    // Add everything, then the shared-library closure of every ELF file.
    let mut elf_seen = std::collections::BTreeSet::new();
    let mut queue = wanted;
    while let Some(p) = queue.pop() {
        let added = tree.add_path(&p)?;
        for real in added {
            if is_elf(&real) && elf_seen.insert(real.clone()) {
                queue.extend(ldd(&real));
            }
        }
    }
    let files = tree.host_files();
    let links = tree.links();
    let (id, size) = write_archive(&tree, out)?;
    Ok(PackageOutcome {
        id,
        size,
        files,
        links,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gcc,
    Clang,
}

fn compiler_kind(compiler: &Path) -> Kind {
    let name = compiler.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.contains("clang") {
        return Kind::Clang;
    }
    // `cc`/`c++` may be either: ask.
    match Command::new(compiler).arg("--version").output() {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("clang") => Kind::Clang,
        _ => Kind::Gcc,
    }
}

/// Run `compiler <flag>` and return the printed path if it is absolute and exists.
fn print_path(compiler: &Path, flag: &str) -> Option<PathBuf> {
    let out = Command::new(compiler).arg(flag).output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let p = PathBuf::from(&s);
    if p.is_absolute() && p.exists() {
        Some(p)
    } else if !s.is_empty() && !s.contains('/') && flag.starts_with("-print-prog-name") {
        // gcc prints a bare name when the program comes from PATH (e.g. `as`).
        find_in_path(&s)
    } else {
        None
    }
}

/// The GCC installation a clang driver selected (`clang -v` says so).
fn selected_gcc_installation(compiler: &Path) -> Option<PathBuf> {
    let out = Command::new(compiler).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| l.strip_prefix("Selected GCC installation: "))
        .map(|p| PathBuf::from(p.trim()))
        .filter(|p| p.is_dir())
}

/// Look a program up on PATH.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn is_elf(p: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"\x7fELF"
}

/// The shared libraries and the interpreter `ldd` names for an ELF file.
fn ldd(p: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new("ldd").arg(p).output() else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let candidate = match line.split_once("=>") {
            Some((_, rhs)) => rhs.trim(),
            None => line.trim(),
        };
        let path = candidate.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs
}

#[derive(Default)]
struct Tree {
    nodes: BTreeMap<PathBuf, Node>,
}

impl Tree {
    /// Add `p` with its ancestors, keeping symlinks found along the way, and
    /// (for a directory) everything below it. Returns the real files added.
    fn add_path(&mut self, p: &Path) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        let mut budget = 40;
        let mut todo = vec![p.to_path_buf()];
        while let Some(path) = todo.pop() {
            budget -= 1;
            if budget == 0 {
                bail!("too many symlinks resolving {}", p.display());
            }
            let mut cur = PathBuf::from("/");
            let comps: Vec<_> = path.components().collect();
            let mut i = 0;
            let mut redirected = false;
            while i < comps.len() {
                match comps[i] {
                    Component::RootDir => {}
                    Component::Normal(name) => {
                        let next = cur.join(name);
                        let meta = fs::symlink_metadata(&next)
                            .with_context(|| format!("packaging {}", next.display()))?;
                        if meta.file_type().is_symlink() {
                            let target = fs::read_link(&next)?;
                            self.nodes
                                .insert(next.clone(), Node::Symlink(target.clone()));
                            let base = if target.is_absolute() {
                                target
                            } else {
                                cur.join(target)
                            };
                            let mut rest = normalize(&base);
                            for c in &comps[i + 1..] {
                                rest.push(c);
                            }
                            todo.push(rest);
                            redirected = true;
                            break;
                        }
                        let last = i + 1 == comps.len();
                        if meta.is_dir() {
                            self.nodes.entry(next.clone()).or_insert(Node::Dir);
                            if last {
                                self.add_dir_contents(&next, &mut files)?;
                            }
                        } else if last {
                            let exec = meta.permissions().mode() & 0o111 != 0;
                            self.nodes.insert(
                                next.clone(),
                                Node::File {
                                    src: next.clone(),
                                    exec,
                                },
                            );
                            files.push(next.clone());
                        } else {
                            bail!("{} is not a directory", next.display());
                        }
                        cur = next;
                    }
                    Component::ParentDir => {
                        cur.pop();
                    }
                    _ => {}
                }
                i += 1;
            }
            let _ = redirected;
        }
        Ok(files)
    }

    fn add_dir_contents(&mut self, dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            let ft = e.file_type()?;
            if ft.is_symlink() {
                self.nodes
                    .insert(p.clone(), Node::Symlink(fs::read_link(&p)?));
            } else if ft.is_dir() {
                self.nodes.insert(p.clone(), Node::Dir);
                self.add_dir_contents(&p, files)?;
            } else if ft.is_file() {
                let exec = e.metadata()?.permissions().mode() & 0o111 != 0;
                self.nodes.insert(
                    p.clone(),
                    Node::File {
                        src: p.clone(),
                        exec,
                    },
                );
                files.push(p);
            }
        }
        Ok(())
    }

    fn links(&self) -> Vec<(PathBuf, PathBuf)> {
        self.nodes
            .iter()
            .filter_map(|(path, n)| match n {
                Node::Symlink(target) => Some((path.clone(), target.clone())),
                _ => None,
            })
            .collect()
    }

    fn host_files(&self) -> Vec<(PathBuf, u64, i64)> {
        self.nodes
            .values()
            .filter_map(|n| match n {
                Node::File { src, .. } => {
                    let m = fs::metadata(src).ok()?;
                    Some((src.clone(), m.len(), m.mtime()))
                }
                _ => None,
            })
            .collect()
    }
}

pub use swarmcc_protocol::job::normalize;

/// Writes to the inner writer and hashes what passes through.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_archive(tree: &Tree, out: &Path) -> Result<(ToolchainId, u64)> {
    let tmp = out.with_extension("partial");
    let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let hw = HashingWriter {
        inner: io::BufWriter::new(file),
        hasher: blake3::Hasher::new(),
        written: 0,
    };
    let enc = zstd::Encoder::new(hw, 3)?;
    let mut builder = tar::Builder::new(enc);
    builder.follow_symlinks(false);
    for (path, node) in &tree.nodes {
        let rel = path.strip_prefix("/").unwrap_or(path);
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match node {
            Node::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                builder.append_data(&mut h, rel, io::empty())?;
            }
            Node::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                builder.append_link(&mut h, rel, target)?;
            }
            Node::File { src, exec } => {
                let f =
                    fs::File::open(src).with_context(|| format!("reading {}", src.display()))?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(if *exec { 0o755 } else { 0o644 });
                h.set_size(f.metadata()?.len());
                builder.append_data(&mut h, rel, f)?;
            }
        }
    }
    let enc = builder.into_inner()?;
    let mut hw = enc.finish()?;
    hw.flush()?;
    let id = ToolchainId(Hash32::from(hw.hasher.finalize()));
    let size = hw.written;
    hw.inner
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    fs::rename(&tmp, out)?;
    Ok((id, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcc_closure_is_deterministic_and_complete() {
        let Some(gcc) = find_in_path("gcc") else {
            panic!("gcc is required for the tests (the README's test command installs it)");
        };
        let t = tempfile::tempdir().unwrap();
        let a = package_compiler(&gcc, &t.path().join("a.tar.zst")).unwrap();
        let b = package_compiler(&gcc, &t.path().join("b.tar.zst")).unwrap();
        assert_eq!(a.id, b.id, "same files must give the same archive id");
        let bytes = fs::read(t.path().join("a.tar.zst")).unwrap();
        assert_eq!(
            Hash32::of(&bytes),
            a.id.0,
            "id is the blake3 of the archive bytes"
        );
        // The archive holds cc1 and the dynamic loader.
        let dec = zstd::Decoder::new(&bytes[..]).unwrap();
        let mut ar = tar::Archive::new(dec);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n.ends_with("/cc1")), "cc1 missing");
        assert!(
            names.iter().any(|n| n.contains("ld-linux")),
            "loader missing"
        );
        assert!(names.iter().any(|n| n.contains("libc.so")), "libc missing");
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "entries are sorted");
    }
}
