//! The read-only tree a sandbox's `/` is made of, kept per job slot.
//!
//! A job's `/` is a directory tree of hard links: the carried source files at
//! the client's absolute paths, the toolchain's files where a directory holds
//! both, and empty mount points for what bubblewrap binds over it (toolchain
//! subtrees, the writable cwd, `/tmp`, `/dev`, `/proc`). Making such a tree
//! and removing it again for every job costs a few dozen inode allocations
//! and frees per compile, and on ext4 each allocation gets slower the more
//! inodes were freed in the last minutes (without a journal it skips them
//! one by one), so a build's own churn slowed its later jobs.
//!
//! So each job slot keeps its tree. A job's tree is first planned in memory
//! ([`plan`]: from the job's carried files and the toolchain root), then the
//! slot's tree is changed where it differs from that plan ([`SlotTree::sync`]):
//! everything the plan lacks is removed before the sandbox starts, so a job
//! sees exactly its own files and never an earlier job's. Jobs of one slot
//! never overlap, and a slot whose last change failed half-way is wiped and
//! rebuilt. The tree is always bound read-only; each job's writable directory
//! stays fresh per job (see the builder).

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::build::sandbox::check_clean_abs;

/// One entry of a planned tree, at its path relative to the tree's root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir,
    /// A hard link to this immutable file (a content-addressed source blob or
    /// a file of an unpacked toolchain, whose paths name their content).
    Link(PathBuf),
    /// A symlink with this target (copied from the toolchain, never followed).
    Symlink(PathBuf),
    /// An empty file for bubblewrap to bind a file over.
    Empty,
}

/// A tree's entries by path relative to its top. The keys are clean paths
/// (no `.`, `..`, doubled or trailing `/`), ordered as bytes: a directory
/// comes before everything below it, and comparing costs a `memcmp`
/// (ordering `PathBuf`s parses both into components on every comparison,
/// which was most of the node's time spent planning).
pub type Entries = BTreeMap<OsString, Entry>;

/// A sandbox's filesystem: the tree's entries and bubblewrap's arguments.
#[derive(Debug)]
pub struct Layout {
    pub entries: Entries,
    pub args: Vec<OsString>,
}

/// Plan the sandbox's filesystem.
///
/// Three layers: the toolchain root (`view`, whose reads are remembered
/// for the next job of the same toolchain), the carried files `carried`
/// (absolute path in the sandbox → the file to link there), and the
/// writable directories `writable` (sandbox path, host directory bound
/// there: the job's cwd, or a directory holding it, and the directories of
/// outputs elsewhere; none inside another). The tree (at `tree` on the host)
/// becomes the sandbox's `/`: where a directory exists in both the carried
/// files and the toolchain, the toolchain's files are linked into the tree
/// and its symlinks copied, and only its subdirectories that the carried
/// files lack are bound whole. Every mount costs bubblewrap time on every
/// compile, so a C unit whose headers sit next to the compiler's files costs
/// a handful of mounts instead of one per toolchain file. Below `/tmp` (a
/// size-bounded tmpfs over the tree) and below a writable directory
/// entries are bound one by one.
/// Everything is read-only but the writable directories and `/tmp`. `link_toolchain`: the
/// toolchain's files can be hard-linked into the tree (same filesystem);
/// otherwise they are bound one by one.
///
/// Only the toolchain root is read; nothing is written.
pub fn plan(
    view: &RootView,
    carried: &BTreeMap<PathBuf, PathBuf>,
    tree: &Path,
    writable: &[(&Path, &Path)],
    tmp_size: u64,
    link_toolchain: bool,
) -> Result<Layout> {
    for (at, _) in writable {
        check_clean_abs(&at.to_string_lossy())?;
        if *at == Path::new("/") {
            bail!("a job's writable directory cannot be /");
        }
        if let Some(outer) = writable.iter().find(|(o, _)| o != at && at.starts_with(o)) {
            bail!(
                "writable directory {} is inside another, {}",
                at.display(),
                outer.0.display()
            );
        }
    }
    let mut plan = Plan {
        root: view,
        tree,
        writable,
        tmp_size,
        link_toolchain,
        carried: Carried::new(carried)?,
        entries: BTreeMap::new(),
    };
    let mut args: Vec<OsString> = vec!["--ro-bind".into(), tree.into(), "/".into()];
    plan.merge(Path::new("/"), true, &mut args)?;
    if !args.iter().any(|a| a == "/tmp") {
        plan.mount_point(Path::new("/tmp"), true)?;
        args.extend(tmpfs_args(tmp_size));
    }
    // A minimal /dev: the host's harmless character devices bound one by
    // one and the usual links to /proc, in the tree. (bubblewrap's `--dev`
    // makes a tmpfs with devpts and more, about a millisecond per job on
    // this VM.)
    plan.mount_point(Path::new("/dev"), true)?;
    for dev in DEVICES {
        let path = Path::new("/dev").join(dev);
        plan.mount_point(&path, false)?;
        args.extend(["--dev-bind".into(), path.clone().into(), path.into()]);
    }
    for (name, target) in DEV_LINKS {
        plan.add(&Path::new("/dev").join(name), Entry::Symlink(target.into()))?;
    }
    plan.mount_point(Path::new("/proc"), true)?;
    args.extend(["--proc".into(), "/proc".into()]);
    args.extend(["--remount-ro".into(), "/".into()]);
    // The carried files and their directories, hidden by a mount or not
    // (below `/tmp` they are bound from the tree).
    for (path, file) in carried {
        plan.add(path, Entry::Link(file.clone()))?;
    }
    Ok(Layout {
        entries: plan.entries,
        args,
    })
}

/// The devices a job sees under `/dev`.
const DEVICES: [&str; 4] = ["null", "zero", "random", "urandom"];
const DEV_LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

fn tmpfs_args(size: u64) -> [OsString; 4] {
    [
        "--size".into(),
        size.to_string().into(),
        "--tmpfs".into(),
        "/tmp".into(),
    ]
}

/// The carried files as a directory tree in memory.
struct Carried {
    files: BTreeSet<PathBuf>,
    dirs: BTreeMap<PathBuf, BTreeSet<OsString>>,
}

impl Carried {
    fn new(carried: &BTreeMap<PathBuf, PathBuf>) -> Result<Carried> {
        let mut c = Carried {
            files: BTreeSet::new(),
            dirs: BTreeMap::new(),
        };
        for path in carried.keys() {
            check_clean_abs(&path.to_string_lossy())?;
            c.files.insert(path.clone());
            let mut child = path.as_path();
            while let Some(parent) = child.parent() {
                let Some(name) = child.file_name() else { break };
                let names = match c.dirs.get_mut(parent) {
                    Some(n) => n,
                    None => c.dirs.entry(parent.to_path_buf()).or_default(),
                };
                if !names.insert(name.to_os_string()) {
                    // Known already, and so is the way up from it.
                    break;
                }
                child = parent;
            }
        }
        if let Some(both) = c.files.iter().find(|f| c.dirs.contains_key(*f)) {
            bail!("carried file {} is also a directory", both.display());
        }
        Ok(c)
    }

    fn exists(&self, p: &Path) -> bool {
        self.files.contains(p) || self.dirs.contains_key(p)
    }

    fn is_dir(&self, p: &Path) -> bool {
        self.dirs.contains_key(p)
    }
}

struct Plan<'a> {
    root: &'a RootView,
    tree: &'a Path,
    /// Where the job may write: (sandbox path, host directory bound there).
    writable: &'a [(&'a Path, &'a Path)],
    tmp_size: u64,
    link_toolchain: bool,
    carried: Carried,
    entries: Entries,
}

impl Plan<'_> {
    fn rel(p: &Path) -> &OsStr {
        p.strip_prefix("/").unwrap_or(p).as_os_str()
    }

    fn in_tree(&self, p: &Path) -> PathBuf {
        self.tree.join(Self::rel(p))
    }

    /// Plan `entry` at the absolute `path`, with its parent directories.
    fn add(&mut self, path: &Path, entry: Entry) -> Result<()> {
        let mut parent = path.parent();
        while let Some(dir) = parent.filter(|d| *d != Path::new("/")) {
            match self.entries.get(Self::rel(dir)) {
                Some(Entry::Dir) => break,
                Some(_) => bail!("{} is in the way of {}", dir.display(), path.display()),
                None => {
                    self.entries.insert(Self::rel(dir).to_owned(), Entry::Dir);
                }
            }
            parent = dir.parent();
        }
        match self.entries.get(Self::rel(path)) {
            Some(old) if *old != entry => bail!("{} is planned twice", path.display()),
            Some(_) => {}
            None => {
                self.entries.insert(Self::rel(path).to_owned(), entry);
            }
        }
        Ok(())
    }

    /// Make sure `path` exists in the tree (a directory, or an empty file to
    /// bind a file over), so that bwrap can mount on it under a read-only `/`.
    fn mount_point(&mut self, path: &Path, dir: bool) -> Result<()> {
        if self.carried.exists(path) {
            if self.carried.is_dir(path) != dir {
                bail!("{} is in the way of a mount point", path.display());
            }
            return Ok(());
        }
        self.add(path, if dir { Entry::Dir } else { Entry::Empty })
    }

    /// Merge the toolchain's and the carried files' `dir`. `into_tree`: the
    /// tree is visible here (toolchain entries go into it); otherwise (below
    /// the `/tmp` tmpfs) every entry is mounted.
    fn merge(&mut self, dir: &Path, into_tree: bool, args: &mut Vec<OsString>) -> Result<()> {
        let t_dir = resolve_in_root(self.root, dir).filter(|p| self.root.is_dir(p));
        let mut names: BTreeSet<OsString> = self.carried.dirs.get(dir).cloned().unwrap_or_default();
        if let Some(d) = &t_dir {
            names.extend(self.root.list(d)?.iter().cloned());
        }
        // The way down to each writable directory.
        for (at, _) in self.writable {
            if let Ok(below) = at.strip_prefix(dir) {
                if let Some(first) = below.components().next() {
                    names.insert(first.as_os_str().to_os_string());
                }
            }
        }
        for name in names {
            let path = dir.join(&name);
            if path == Path::new("/dev") || path == Path::new("/proc") {
                continue;
            }
            if let Some((_, host)) = self.writable.iter().find(|(at, _)| *at == path) {
                if into_tree {
                    self.mount_point(&path, true)?;
                }
                args.extend(["--bind".into(), (*host).into(), path.clone().into()]);
                // A toolchain of the project's own (a compiler kept in the
                // source tree, as Android's prebuilts are) has files under
                // the cwd: mounted over the writable directory. (The
                // builder puts the carried files under the cwd into the
                // directory; any left in `carried` are mounted too.)
                self.merge(&path, false, args)?;
                continue;
            }
            let t_raw = t_dir.as_ref().map(|d| d.join(&name));
            let t_meta = t_raw.as_ref().and_then(|p| self.root.lstat(p));
            let s_exists = self.carried.exists(&path);
            let s_is_dir = self.carried.is_dir(&path);
            let t_is_dir = t_meta.is_some()
                && resolve_in_root(self.root, &path).is_some_and(|p| self.root.is_dir(&p));
            let writable_below = self.writable.iter().any(|(at, _)| at.starts_with(&path));
            if path == Path::new("/tmp") && (writable_below || s_is_dir || t_is_dir) {
                // The writable tmpfs, with whatever the layers have there
                // (carried generated headers, the cwd) mounted over it.
                if into_tree {
                    self.mount_point(&path, true)?;
                }
                args.extend(tmpfs_args(self.tmp_size));
                self.merge(&path, false, args)?;
            } else if writable_below || (s_is_dir && t_is_dir) {
                if into_tree {
                    self.mount_point(&path, true)?;
                } else {
                    args.extend(["--dir".into(), path.clone().into_os_string()]);
                }
                self.merge(&path, into_tree, args)?;
            } else if s_exists {
                // A carried file or subtree: the tree's own, unless a tmpfs hides it.
                if !into_tree {
                    args.extend([
                        "--ro-bind".into(),
                        self.in_tree(&path).into_os_string(),
                        path.into_os_string(),
                    ]);
                }
            } else if let (Some(raw), Some(meta)) = (t_raw, t_meta) {
                self.toolchain_entry(path, raw, meta, into_tree, args)?;
            }
        }
        Ok(())
    }

    /// A name only the toolchain has, at `path` (its file `raw`): a symlink
    /// made, a file linked into the tree when it can be, else mounted.
    fn toolchain_entry(
        &mut self,
        path: PathBuf,
        raw: PathBuf,
        meta: Node,
        into_tree: bool,
        args: &mut Vec<OsString>,
    ) -> Result<()> {
        if let Node::Symlink(target) = meta {
            if into_tree {
                self.add(&path, Entry::Symlink(target))?;
            } else {
                args.extend([
                    "--symlink".into(),
                    target.into_os_string(),
                    path.into_os_string(),
                ]);
            }
        } else if into_tree && meta == Node::File && self.link_toolchain {
            // A toolchain file next to carried ones: linked, not mounted.
            self.add(&path, Entry::Link(raw))?;
        } else {
            if into_tree {
                self.mount_point(&path, meta == Node::Dir)?;
            }
            args.extend([
                "--ro-bind".into(),
                raw.into_os_string(),
                path.into_os_string(),
            ]);
        }
        Ok(())
    }
}

/// What planning reads of one unpacked toolchain root, remembered.
///
/// A root never changes once unpacked (its path names its content, and
/// jobs see it read-only), so the builder keeps one view per root and every
/// job of that toolchain plans from memory instead of repeating the same
/// `statx`, `readlink` and directory listings (about 0.3 ms of the node's
/// time per compile, measured). Only what planning asked for is kept, and
/// at most [`RootView::MAX_ENTRIES`] paths of it.
pub struct RootView {
    root: PathBuf,
    seen: Mutex<HashMap<PathBuf, Option<Node>>>,
    lists: Mutex<HashMap<PathBuf, Arc<[OsString]>>>,
}

/// A path in a toolchain root, not followed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Symlink(PathBuf),
    Other,
}

impl RootView {
    /// Bound on the paths remembered per root.
    pub const MAX_ENTRIES: usize = 100_000;

    pub fn new(root: PathBuf) -> RootView {
        RootView {
            root,
            seen: Mutex::new(HashMap::new()),
            lists: Mutex::new(HashMap::new()),
        }
    }

    /// `host`'s kind (a symlink's target with it), `None` if it is absent.
    fn lstat(&self, host: &Path) -> Option<Node> {
        let lock = || self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = lock().get(host) {
            return n.clone();
        }
        let node = fs::symlink_metadata(host).ok().and_then(|m| {
            let t = m.file_type();
            Some(if t.is_symlink() {
                Node::Symlink(fs::read_link(host).ok()?)
            } else if t.is_dir() {
                Node::Dir
            } else if t.is_file() {
                Node::File
            } else {
                Node::Other
            })
        });
        let mut seen = lock();
        if seen.len() < Self::MAX_ENTRIES {
            seen.insert(host.to_path_buf(), node.clone());
        }
        node
    }

    /// Whether `resolved` (from [`resolve_in_root`], so no symlink is left
    /// on its way) is a directory.
    fn is_dir(&self, resolved: &Path) -> bool {
        self.lstat(resolved) == Some(Node::Dir)
    }

    /// The names in the directory `dir`.
    fn list(&self, dir: &Path) -> Result<Arc<[OsString]>> {
        let lock = || self.lists.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = lock().get(dir) {
            return Ok(l.clone());
        }
        let mut names = Vec::new();
        for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            names.push(e?.file_name());
        }
        let names: Arc<[OsString]> = names.into();
        let mut lists = lock();
        if lists.len() < Self::MAX_ENTRIES {
            lists.insert(dir.to_path_buf(), names.clone());
        }
        Ok(names)
    }
}

/// Resolve `p` (absolute, inside the sandbox) to where it lives in the
/// toolchain root, following the root's own symlinks without leaving it.
fn resolve_in_root(view: &RootView, p: &Path) -> Option<PathBuf> {
    let root = view.root.as_path();
    let mut cur = PathBuf::from("/");
    let mut todo: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .rev()
        .collect();
    let mut hops = 0;
    while let Some(name) = todo.pop() {
        let next = cur.join(&name);
        let host = root.join(next.strip_prefix("/").ok()?);
        if let Node::Symlink(target) = view.lstat(&host)? {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let base = if target.is_absolute() {
                PathBuf::from("/")
            } else {
                cur.clone()
            };
            let mut parts: Vec<OsString> = Vec::new();
            let mut b = base;
            for c in target.components() {
                match c {
                    Component::Normal(n) => parts.push(n.to_os_string()),
                    Component::ParentDir if parts.pop().is_none() => {
                        b.pop();
                    }
                    _ => {}
                }
            }
            cur = b;
            for part in parts.into_iter().rev() {
                todo.push(part);
            }
        } else {
            cur = next;
        }
    }
    Some(root.join(cur.strip_prefix("/").ok()?))
}

/// One slot's tree on disk and what it holds, as last made.
pub(crate) struct SlotTree {
    dir: PathBuf,
    /// `None` when unknown (new, or a change failed half-way): the next
    /// [`sync`](SlotTree::sync) starts from an empty directory.
    holds: Option<Entries>,
}

impl SlotTree {
    pub fn new(dir: PathBuf) -> SlotTree {
        SlotTree { dir, holds: None }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Change the tree on disk into exactly `want`: remove what it lacks or
    /// holds differently (deepest first), then add what is missing (parents
    /// first). Entries already right are not touched. Returns what was
    /// removed (an empty path: the whole tree).
    pub fn sync(&mut self, want: Entries) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        let holds = match self.holds.take() {
            Some(h) => h,
            None => {
                removed.push(PathBuf::new());
                crate::store::toolchains::remove_tree(&self.dir)
                    .with_context(|| format!("clearing {}", self.dir.display()))?;
                BTreeMap::new()
            }
        };
        fs::create_dir_all(&self.dir)?;
        // Both maps are sorted alike: each is walked once beside the other
        // (a lookup per entry would compare paths log n times each).
        let mut wanted = want.iter().rev().peekable();
        for (rel, had) in holds.iter().rev() {
            while wanted.next_if(|(w, _)| *w > rel).is_some() {}
            if wanted.peek() == Some(&(rel, had)) {
                continue;
            }
            let at = self.dir.join(rel);
            let res = match had {
                Entry::Dir => fs::remove_dir(&at),
                _ => fs::remove_file(&at),
            };
            res.with_context(|| format!("removing {}", at.display()))?;
            removed.push(PathBuf::from(rel));
        }
        let mut held = holds.iter().peekable();
        for (rel, entry) in &want {
            while held.next_if(|(h, _)| *h < rel).is_some() {}
            if held.peek() == Some(&(rel, entry)) {
                continue;
            }
            let at = self.dir.join(rel);
            let res = match entry {
                Entry::Dir => fs::create_dir(&at),
                Entry::Link(file) => fs::hard_link(file, &at),
                Entry::Symlink(target) => std::os::unix::fs::symlink(target, &at),
                Entry::Empty => fs::File::create(&at).map(drop),
            };
            res.with_context(|| format!("making {}", at.display()))?;
        }
        self.holds = Some(want);
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Carried files (any content) at these sandbox paths, stored under `blobs`.
    fn carried(blobs: &Path, files: &[&str]) -> BTreeMap<PathBuf, PathBuf> {
        fs::create_dir_all(blobs).unwrap();
        files
            .iter()
            .map(|f| {
                let blob = blobs.join(f.replace('/', "_"));
                fs::write(&blob, f.as_bytes()).unwrap();
                (PathBuf::from("/").join(f), blob)
            })
            .collect()
    }

    /// bwrap's arguments as one line, for matching.
    fn line_of(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The plan of a fresh read of `root` for a job at `cwd`, with a 1 MiB
    /// `/tmp` and toolchain files linked into the tree.
    fn plan_at(
        root: &Path,
        files: &BTreeMap<PathBuf, PathBuf>,
        tree: &Path,
        work: &Path,
        cwd: &str,
    ) -> Layout {
        plan(
            &RootView::new(root.to_path_buf()),
            files,
            tree,
            &[(Path::new(cwd), Path::new(work))],
            1 << 20,
            true,
        )
        .unwrap()
    }

    fn toolchain(root: &Path) {
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("usr/lib/gcc/12")).unwrap();
        fs::write(root.join("usr/bin/gcc"), b"").unwrap();
        fs::write(root.join("usr/lib/gcc/12/cc1"), b"cc1").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("usr/lib/gcc/12/abs")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    }

    #[test]
    fn a_remembered_root_plans_as_a_fresh_read_does() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        toolchain(&root);
        let tree = t.path().join("tree");
        let work = t.path().join("work");
        let blobs = t.path().join("blobs");
        let view = RootView::new(root.clone());
        let jobs = [
            (
                vec!["usr/include/stdio.h", "usr/lib/gcc/12/include/stddef.h"],
                "/home/u/b",
            ),
            (vec!["usr/lib/x.h", "home/u/b/a.c"], "/home/u/b"),
            (vec!["tmp/gen/g.h"], "/tmp/p/build"),
            (vec!["usr/include/stdio.h"], "/srv/b"),
        ];
        for round in 0..2 {
            for (files, cwd) in &jobs {
                let files = carried(&blobs, files);
                let fresh = plan(
                    &RootView::new(root.clone()),
                    &files,
                    &tree,
                    &[(Path::new(cwd), Path::new(&work))],
                    1,
                    true,
                )
                .unwrap();
                let kept = plan(
                    &view,
                    &files,
                    &tree,
                    &[(Path::new(cwd), Path::new(&work))],
                    1,
                    true,
                )
                .unwrap();
                assert_eq!(fresh.entries, kept.entries, "round {round}, {cwd}");
                assert_eq!(fresh.args, kept.args, "round {round}, {cwd}");
            }
        }
        // The second round came from memory: a root never changes, so what
        // was read once is not read again (shown here by changing it).
        fs::remove_file(root.join("usr/lib/gcc/12/cc1")).unwrap();
        let files = carried(&blobs, &jobs[0].0);
        let kept = plan(
            &view,
            &files,
            &tree,
            &[(Path::new("/home/u/b"), Path::new(&work))],
            1,
            true,
        )
        .unwrap();
        assert!(kept.entries.contains_key(OsStr::new("usr/lib/gcc/12/cc1")));
    }

    #[test]
    fn the_tree_is_the_root_with_toolchain_files_linked_in_and_few_mounts() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        toolchain(&root);
        let files = carried(
            &t.path().join("blobs"),
            &[
                "usr/include/stdio.h",
                "usr/include/bits/types.h",
                "usr/lib/gcc/12/include/stddef.h",
                "home/u/proj/src/a.c",
            ],
        );
        let (tree, work) = (t.path().join("tree"), t.path().join("work"));
        let layout = plan_at(&root, &files, &tree, &work, "/home/u/proj/build");
        let mut slot = SlotTree::new(tree.clone());
        slot.sync(layout.entries).unwrap();
        let joined = line_of(&layout.args);
        let has = |s: String| assert!(joined.contains(&s), "missing {s:?} in {joined}");
        assert!(
            joined.starts_with(&format!("--ro-bind {} / ", tree.display())),
            "{joined}"
        );
        // A toolchain directory the tree lacks: one bind for the subtree.
        has(format!("--ro-bind {}/usr/bin /usr/bin", root.display()));
        assert!(tree.join("usr/bin").is_dir(), "mount point");
        // A directory in both: the toolchain's file hard-linked, its
        // symlinks copied (never followed on the host), nothing mounted.
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(
            ino(&tree.join("usr/lib/gcc/12/cc1")),
            ino(&root.join("usr/lib/gcc/12/cc1"))
        );
        assert_eq!(
            fs::read_link(tree.join("usr/lib/gcc/12/abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            fs::read_link(tree.join("lib")).unwrap(),
            Path::new("usr/lib")
        );
        assert_eq!(
            fs::read(tree.join("usr/include/bits/types.h")).unwrap(),
            b"usr/include/bits/types.h"
        );
        assert!(!joined.contains("/usr/lib/gcc"), "{joined}");
        assert!(!joined.contains("/usr/include"), "{joined}");
        assert!(!joined.contains("--symlink"), "{joined}");
        // The writable cwd on its mount point; the project's sources are the tree's.
        has(format!("--bind {} /home/u/proj/build", work.display()));
        assert!(tree.join("home/u/proj/build").is_dir());
        assert!(!joined.contains("/home/u/proj/src"), "{joined}");
        has("--size 1048576 --tmpfs /tmp".into());
        for d in ["tmp", "dev", "proc"] {
            assert!(tree.join(d).is_dir(), "{d}");
        }
        assert!(joined.ends_with("--remount-ro /"), "{joined}");
        // bwrap's args: the root, /usr/bin, the cwd, /tmp, 4 devices, /proc.
        let mounts = layout
            .args
            .iter()
            .filter(|a| {
                ["--ro-bind", "--bind", "--tmpfs", "--dev-bind", "--proc"]
                    .contains(&a.to_str().unwrap_or(""))
            })
            .count();
        assert_eq!(mounts, 9, "{joined}");
        has("--dev-bind /dev/null /dev/null".into());
        assert!(tree.join("dev/null").is_file(), "mount point");
        assert_eq!(
            fs::read_link(tree.join("dev/stdout")).unwrap(),
            Path::new("/proc/self/fd/1")
        );

        // Without hard links into the toolchain: its files are bound.
        let layout = plan(
            &RootView::new(root.clone()),
            &files,
            &tree,
            &[(Path::new("/home/u/proj/build"), Path::new(&work))],
            1 << 20,
            false,
        )
        .unwrap();
        assert_eq!(
            layout.entries.get(OsStr::new("usr/lib/gcc/12/cc1")),
            Some(&Entry::Empty)
        );
        let bind = format!(
            "--ro-bind {}/usr/lib/gcc/12/cc1 /usr/lib/gcc/12/cc1",
            root.display()
        );
        assert!(line_of(&layout.args).contains(&bind), "{:?}", layout.args);

        // Unclean working directories and carried paths are refused.
        for cwd in ["/", "rel", "/a/../etc"] {
            assert!(
                plan(
                    &RootView::new(root.clone()),
                    &files,
                    &tree,
                    &[(Path::new(cwd), Path::new(&work))],
                    1,
                    true
                )
                .is_err(),
                "{cwd}"
            );
        }
        let mut bad = files.clone();
        bad.insert("/usr/../etc/x".into(), root.join("usr/bin/gcc"));
        assert!(plan(
            &RootView::new(root.clone()),
            &bad,
            &tree,
            &[(Path::new("/home/u/b"), Path::new(&work))],
            1,
            true
        )
        .is_err());
        // A carried file where another one needs a directory.
        let mut clash = files.clone();
        clash.insert("/usr/include".into(), root.join("usr/bin/gcc"));
        assert!(plan(
            &RootView::new(root.clone()),
            &clash,
            &tree,
            &[(Path::new("/home/u/b"), Path::new(&work))],
            1,
            true
        )
        .is_err());
    }

    #[test]
    fn below_tmp_every_carried_entry_is_mounted_over_the_tmpfs() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        let (tree, work) = (t.path().join("tree"), t.path().join("work"));
        let files = carried(
            &t.path().join("blobs"),
            &["tmp/p/src/a.h", "tmp/p/build/b.c", "usr/include/stdio.h"],
        );
        let layout = plan_at(&root, &files, &tree, &work, "/tmp/p/build");
        let joined = line_of(&layout.args);
        let has = |s: String| assert!(joined.contains(&s), "missing {s:?} in {joined}");
        has(format!(
            "--size 1048576 --tmpfs /tmp --dir /tmp/p --bind {} /tmp/p/build --ro-bind {}/tmp/p/build/b.c /tmp/p/build/b.c --ro-bind {}/tmp/p/src /tmp/p/src",
            work.display(),
            tree.display(),
            tree.display()
        ));
        assert_eq!(joined.matches("--tmpfs").count(), 1, "{joined}");
        assert!(!joined.contains("/usr/include"), "{joined}");
        // What is bound from the tree is in it.
        SlotTree::new(tree.clone()).sync(layout.entries).unwrap();
        assert!(tree.join("tmp/p/src/a.h").is_file());

        // Carried files under /tmp with the cwd elsewhere: still visible
        // over a writable /tmp.
        let files = carried(&t.path().join("blobs"), &["tmp/gen/x.h", "home/u/a.c"]);
        let layout = plan_at(&root, &files, &tree, &work, "/home/u/b");
        let joined = line_of(&layout.args);
        assert!(
            joined.contains(&format!(
                "--size 1048576 --tmpfs /tmp --ro-bind {}/tmp/gen /tmp/gen",
                tree.display()
            )),
            "{joined}"
        );
        assert_eq!(joined.matches("--tmpfs").count(), 1, "{joined}");
    }

    #[test]
    fn a_toolchain_under_the_cwd_is_mounted_over_the_writable_directory() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        toolchain(&root);
        // A compiler kept in the project: its files and a link to it.
        fs::create_dir_all(root.join("home/u/proj/prebuilts/bin")).unwrap();
        fs::write(root.join("home/u/proj/prebuilts/bin/cc"), b"cc").unwrap();
        std::os::unix::fs::symlink("prebuilts/bin/cc", root.join("home/u/proj/cc")).unwrap();
        let (tree, work) = (t.path().join("tree"), t.path().join("work"));
        let files = carried(&t.path().join("blobs"), &["usr/include/stdio.h"]);
        let layout = plan_at(&root, &files, &tree, &work, "/home/u/proj");
        let joined = line_of(&layout.args);
        // After the cwd's bind (a mount under it comes after it), in order.
        assert!(
            joined.contains(&format!(
                "--bind {} /home/u/proj --symlink prebuilts/bin/cc /home/u/proj/cc --ro-bind {}/home/u/proj/prebuilts /home/u/proj/prebuilts",
                work.display(),
                root.display()
            )),
            "{joined}"
        );
        // Nothing under the cwd goes into the tree, which the cwd hides.
        SlotTree::new(tree.clone()).sync(layout.entries).unwrap();
        assert_eq!(listing(&tree.join("home/u/proj")), BTreeSet::new());
    }

    #[test]
    fn every_writable_directory_is_bound_at_its_path_and_none_inside_another() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        toolchain(&root);
        let (tree, work, out) = (
            t.path().join("tree"),
            t.path().join("work"),
            t.path().join("work.1"),
        );
        let files = carried(
            &t.path().join("blobs"),
            &["t/include/x.h", "usr/include/stdio.h"],
        );
        let writable = [
            (Path::new("/reg/foo"), work.as_path()),
            (Path::new("/t/out"), out.as_path()),
        ];
        let layout = plan(
            &RootView::new(root.clone()),
            &files,
            &tree,
            &writable,
            1,
            true,
        )
        .unwrap();
        let joined = line_of(&layout.args);
        for (at, host) in writable {
            let bind = format!("--bind {} {}", host.display(), at.display());
            assert_eq!(joined.matches(&bind).count(), 1, "{joined}");
        }
        SlotTree::new(tree.clone()).sync(layout.entries).unwrap();
        // Mount points for both; the carried header beside them in the tree.
        assert!(tree.join("reg/foo").is_dir() && tree.join("t/out").is_dir());
        assert!(tree.join("t/include/x.h").is_file());
        // One inside another, or at /, is refused.
        for bad in [
            [
                (Path::new("/t"), work.as_path()),
                (Path::new("/t/out"), out.as_path()),
            ],
            [
                (Path::new("/"), work.as_path()),
                (Path::new("/t/out"), out.as_path()),
            ],
        ] {
            assert!(plan(&RootView::new(root.clone()), &files, &tree, &bad, 1, true).is_err());
        }
    }

    /// Every path under `dir`, relative.
    fn listing(dir: &Path) -> BTreeSet<PathBuf> {
        let mut out = BTreeSet::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if e.file_type().unwrap().is_dir() {
                    todo.push(p.clone());
                }
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
        out
    }

    /// Entries ordered as bytes put `a-b` and `a.b` between `a` and `a/x`:
    /// a directory's contents still come after it and go before it.
    #[test]
    fn byte_ordered_entries_make_and_remove_directories_in_order() {
        let t = tempfile::tempdir().unwrap();
        let (tree, file) = (t.path().join("tree"), t.path().join("f"));
        fs::write(&file, b"f").unwrap();
        let entries = |paths: &[(&str, bool)]| -> Entries {
            paths
                .iter()
                .map(|(p, dir)| {
                    let e = if *dir {
                        Entry::Dir
                    } else {
                        Entry::Link(file.clone())
                    };
                    (OsString::from(p), e)
                })
                .collect()
        };
        let mut slot = SlotTree::new(tree.clone());
        let all = [
            ("a", true),
            ("a-b", true),
            ("a-b/x", false),
            ("a.b", false),
            ("a/x", true),
            ("a/x/y", false),
            ("a/x-y", false),
        ];
        slot.sync(entries(&all)).unwrap();
        let want: BTreeSet<PathBuf> = all.iter().map(|(p, _)| PathBuf::from(p)).collect();
        assert_eq!(listing(&tree), want);
        let removed = slot.sync(entries(&all[1..4])).unwrap();
        assert_eq!(listing(&tree).len(), 3);
        assert_eq!(
            removed,
            ["a/x/y", "a/x-y", "a/x", "a"].map(PathBuf::from),
            "deepest first"
        );
        slot.sync(entries(&all)).unwrap();
        assert_eq!(listing(&tree), want);
    }

    #[test]
    fn a_slot_tree_holds_exactly_the_last_plan_and_keeps_what_did_not_change() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        toolchain(&root);
        let blobs = t.path().join("blobs");
        let (tree, work) = (t.path().join("tree"), t.path().join("work"));
        let mut slot = SlotTree::new(tree.clone());
        let first = carried(
            &blobs,
            &[
                "usr/include/stdio.h",
                "usr/include/secret/only-first.h",
                "home/u/a/a.c",
            ],
        );
        let layout = plan(
            &RootView::new(root.clone()),
            &first,
            &tree,
            &[(Path::new("/home/u/a"), Path::new(&work))],
            1,
            true,
        )
        .unwrap();
        let planned: BTreeSet<PathBuf> = layout.entries.keys().map(PathBuf::from).collect();
        slot.sync(layout.entries).unwrap();
        assert_eq!(listing(&tree), planned);
        let ino = |p: &str| fs::symlink_metadata(tree.join(p)).unwrap().ino();
        let (include_dir, stdio) = (ino("usr/include"), ino("usr/include/stdio.h"));

        // The next job: another project, stdio.h with other content.
        let other = t.path().join("blobs2");
        let second = carried(&other, &["usr/include/stdio.h", "srv/b/b.c"]);
        let layout = plan(
            &RootView::new(root.clone()),
            &second,
            &tree,
            &[(Path::new("/srv/b"), Path::new(&work))],
            1,
            true,
        )
        .unwrap();
        let planned: BTreeSet<PathBuf> = layout.entries.keys().map(PathBuf::from).collect();
        slot.sync(layout.entries).unwrap();
        assert_eq!(listing(&tree), planned, "nothing of the first job is left");
        assert!(!tree.join("usr/include/secret").exists());
        assert!(!tree.join("home").exists());
        assert_eq!(
            ino("usr/include"),
            include_dir,
            "an unchanged directory is kept"
        );
        assert_ne!(
            ino("usr/include/stdio.h"),
            stdio,
            "a changed file is replaced"
        );
        assert_eq!(
            fs::read(tree.join("usr/include/stdio.h")).unwrap(),
            b"usr/include/stdio.h"
        );
        assert_eq!(
            ino("usr/include/stdio.h"),
            fs::metadata(other.join("usr_include_stdio.h"))
                .unwrap()
                .ino()
        );

        // A slot whose state is unknown (a failed change) starts afresh:
        // strays in its directory are gone.
        fs::write(tree.join("usr/include/stray.h"), b"x").unwrap();
        let mut fresh = SlotTree::new(tree.clone());
        let layout = plan(
            &RootView::new(root.clone()),
            &second,
            &tree,
            &[(Path::new("/srv/b"), Path::new(&work))],
            1,
            true,
        )
        .unwrap();
        let planned: BTreeSet<PathBuf> = layout.entries.keys().map(PathBuf::from).collect();
        fresh.sync(layout.entries).unwrap();
        assert_eq!(listing(&tree), planned);

        // A change that fails half-way (a blob gone) leaves the state
        // unknown, and the next sync repairs the tree.
        let mut gone = second.clone();
        gone.insert("/usr/include/new.h".into(), t.path().join("no-such-blob"));
        let layout = plan(
            &RootView::new(root.clone()),
            &gone,
            &tree,
            &[(Path::new("/srv/b"), Path::new(&work))],
            1,
            true,
        )
        .unwrap();
        assert!(fresh.sync(layout.entries).is_err());
        let layout = plan(
            &RootView::new(root.clone()),
            &first,
            &tree,
            &[(Path::new("/home/u/a"), Path::new(&work))],
            1,
            true,
        )
        .unwrap();
        let planned: BTreeSet<PathBuf> = layout.entries.keys().map(PathBuf::from).collect();
        fresh.sync(layout.entries).unwrap();
        assert_eq!(listing(&tree), planned);
    }
}
