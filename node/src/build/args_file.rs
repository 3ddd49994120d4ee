//! A job's arguments in a response file (`@file`), for compilers that read
//! them (gcc, clang): the command is then the same for every job of a
//! build, so a slot's next sandbox can be set up before its job arrives
//! (see [`super::slot`]).

use std::path::{Path, PathBuf};
use swarmcc_protocol::Job;

/// A job's arguments in a response file (`@file`), for compilers that read
/// them (gcc, clang): the command is then the same for every job of a
/// build, so the slot's next sandbox can be set up before its job arrives.
/// The file is `/.swarmcc-args` in the sandbox, a file of the slot's
/// read-only tree, which jobs cannot change: it is rewritten in place for
/// each run, so no job costs a new inode for it.
pub(super) struct ArgsFile {
    /// On the host.
    path: PathBuf,
}

/// The response file's path in the sandbox.
const ARGS_FILE: &str = "/.swarmcc-args";

impl ArgsFile {
    /// `None` when the compiler is not one known to read `@file`s, or the
    /// job has a file of its own at that path.
    pub(super) fn for_job(job: &Job, tree: &Path) -> Option<ArgsFile> {
        let taken = |p: &str| Path::new(p).starts_with(ARGS_FILE);
        (reads_response_files(&job.compiler)
            && !job.sources.iter().any(|s| taken(&s.path))
            && !job.outputs.iter().any(|o| taken(o))
            && !taken(&job.cwd))
        .then(|| ArgsFile {
            path: tree.join(&ARGS_FILE[1..]),
        })
    }

    /// The command that reads the arguments from the file.
    pub(super) fn argv(job: &Job) -> Vec<String> {
        vec![job.compiler.clone(), format!("@{ARGS_FILE}")]
    }

    /// Empty the file once the run is over: a held sandbox whose node was
    /// killed runs its command once (see [`sandbox::Started`]), and then
    /// finds no arguments to compile with.
    pub(super) fn clear(&self) {
        let _ = self.open_empty(false);
    }

    /// Write `args` for the compile about to run; its command, or `None`
    /// (then the arguments go on the command line).
    pub(super) fn write(&self, job: &Job, args: &[String]) -> Option<Vec<String>> {
        use std::io::Write;
        let text = response_file(args)?;
        self.open_empty(true).ok()?.write_all(&text).ok()?;
        Some(Self::argv(job))
    }

    /// The file emptied (made if missing and `create`); never through a link.
    fn open_empty(&self, create: bool) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(create)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
    }
}

/// Whether the compiler (by name) reads `@file` arguments as gcc and clang
/// do. Others get their arguments on the command line.
fn reads_response_files(compiler: &str) -> bool {
    let name = Path::new(compiler)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    name.contains("gcc")
        || name.contains("g++")
        || name.contains("clang")
        || ["cc", "c++"].contains(&name)
        || name.ends_with("-cc")
        || name.ends_with("-c++")
}

/// `args` as a response file as gcc (libiberty's `buildargv`) and clang
/// (GNU quoting) read it: one argument per line, a backslash before every
/// blank, quote and backslash. `None` for an empty argument, which the two
/// do not read back alike.
fn response_file(args: &[String]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for a in args {
        if a.is_empty() {
            return None;
        }
        for b in a.bytes() {
            if b.is_ascii_whitespace() || matches!(b, b'\x0b' | b'\\' | b'\'' | b'"') {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'\n');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_from_the_response_file_compile_exactly_alike() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(
            d.join("a.c"),
            "const char *s = STR; const char *u = U; int n = N;\n",
        )
        .unwrap();
        let args = |out: &str| -> Vec<String> {
            [
                "-O2",
                "-c",
                "a.c",
                "-o",
                out,
                // Blanks, both quotes, backslashes, a tab.
                "-DSTR=\"a b\\\"c'd\\\\e\tf\\n\"",
                "-DU=\"'single'  two blanks\"",
                "-DN=1",
            ]
            .map(String::from)
            .to_vec()
        };
        let gcc = |args: &[String]| {
            let out = std::process::Command::new("gcc")
                .args(args)
                .current_dir(d)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        gcc(&args("direct.o"));
        std::fs::write(d.join("args"), response_file(&args("file.o")).unwrap()).unwrap();
        gcc(&["@args".to_string()]);
        let direct = std::fs::read(d.join("direct.o")).unwrap();
        assert!(
            direct.windows(7).any(|w| w == b"b\"c'd\\e"),
            "the macro as written"
        );
        assert_eq!(direct, std::fs::read(d.join("file.o")).unwrap());
        // An empty argument stays on the command line.
        assert_eq!(response_file(&["-c".into(), String::new()]), None);
        assert!(reads_response_files("/usr/bin/gcc"));
        assert!(reads_response_files("/opt/x/bin/x86_64-linux-gnu-g++-12"));
        assert!(reads_response_files("/usr/lib/llvm-16/bin/clang"));
        assert!(!reads_response_files("/usr/bin/bash"));
    }

    #[test]
    fn the_args_file_is_rewritten_in_place_and_never_through_a_link() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree-0");
        std::fs::create_dir(&tree).unwrap();
        let mut job = Job {
            toolchain: swarmcc_protocol::ToolchainId(swarmcc_protocol::Hash32::of(b"t")),
            compiler: "/usr/bin/gcc".into(),
            cwd: "/src".into(),
            env: vec![],
            sources: vec![],
            check: None,
            deps_file: None,
            args: vec![],
            outputs: vec!["/src/a.o".into()],
        };
        let f = ArgsFile::for_job(&job, &tree).unwrap();
        let at = tree.join(".swarmcc-args");
        let argv = f.write(&job, &["-c".into(), "a b.c".into()]).unwrap();
        assert_eq!(argv, ["/usr/bin/gcc", "@/.swarmcc-args"]);
        assert_eq!(std::fs::read(&at).unwrap(), b"-c\na\\ b.c\n");
        let inode = std::fs::metadata(&at).unwrap().ino();
        f.clear();
        assert_eq!(std::fs::read(&at).unwrap(), b"");
        f.write(&job, &["-O2".into()]).unwrap();
        assert_eq!(std::fs::read(&at).unwrap(), b"-O2\n");
        assert_eq!(std::fs::metadata(&at).unwrap().ino(), inode, "same file");
        // A link there is not followed: the arguments stay on the command line.
        let host_file = t.path().join("host-file");
        std::fs::write(&host_file, "keep").unwrap();
        std::fs::remove_file(&at).unwrap();
        std::os::unix::fs::symlink(&host_file, &at).unwrap();
        assert_eq!(f.write(&job, &["-c".into()]), None);
        assert_eq!(std::fs::read(&host_file).unwrap(), b"keep");
        // A job with a file at that path, or a compiler not known to read
        // `@file`s, keeps its command line.
        job.sources.push(swarmcc_protocol::job::SourceRef {
            path: "/.swarmcc-args".into(),
            hash: swarmcc_protocol::Hash32::of(b"x"),
        });
        assert!(ArgsFile::for_job(&job, &tree).is_none());
        job.sources.clear();
        job.compiler = "/usr/bin/bash".into();
        assert!(ArgsFile::for_job(&job, &tree).is_none());
    }
}
