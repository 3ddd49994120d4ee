//! Guessing what a compile reads without running the preprocessor.
//!
//! A first compile of a unit has no earlier manifest to guess from, so the
//! client used to run `gcc -E` on every unit of a cold build: about a tenth
//! of the build's CPU on the same cores as the compiles. Instead, the client
//! follows every `#include` it can read, resolving each name in the
//! compiler's own search path (asked once per flag set with `-E -v`), and
//! sends the files found. Conditionals are not evaluated: every include in
//! every branch is followed, so the guess is a superset of what the compile
//! reads.
//!
//! The guess never decides a result on its own. The builder compiles
//! against exactly the carried files, and its dependency list must prove
//! that everything it read was carried; anything else is redone with local
//! preprocessing. What the dependency list cannot show is a lookup that
//! found a *different* file than a local compile would (a header shadowed in
//! an earlier search directory). The scanner rules that out by carrying, for
//! every name, the file the compiler finds first on this machine: the
//! sandbox only holds files of this machine at their own paths, so it finds
//! the same one first. Names it cannot resolve by reading (`#include MACRO`,
//! `__has_include(MACRO)`, precompiled headers, `-I-`) make it give up.

use crate::args::{Compile, Lang};
use crate::directives::{identifier, name_hash, Include};
use crate::fileinfo::{File, FileInfo, Stamp};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

/// Give up (and preprocess) beyond this many files or bytes: a superset this
/// large costs more to carry than preprocessing does.
const MAX_FILES: usize = 4096;
const MAX_BYTES: usize = 64 << 20;

/// Environment variables that change a local compile's search path (or its
/// outputs) in ways the sandboxed compile would not see.
const SEARCH_ENV: &[&str] = &[
    "CPATH",
    "C_INCLUDE_PATH",
    "CPLUS_INCLUDE_PATH",
    "OBJC_INCLUDE_PATH",
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
    "SDKROOT",
    "DEPENDENCIES_OUTPUT",
    "SUNPRO_DEPENDENCIES",
];

/// The compiler's include search path as `-E -v` prints it: the `"..."`
/// directories, then the `<...>` ones (gcc's quote chain runs on into the
/// bracket chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPath {
    pub quote: Vec<String>,
    pub bracket: Vec<String>,
    /// The macros defined before the first line of the unit (predefined
    /// and command-line ones), from `-dM`.
    pub macros: HashSet<String>,
}

impl SearchPath {
    fn chain(&self) -> impl Iterator<Item = &String> {
        self.quote.iter().chain(&self.bracket)
    }

    /// Parse the output of `-E -dM -v`: the `#define`s, and the part
    /// between "search starts here" and "End of search list.". `None` when
    /// there is no such list or it names a framework directory (macOS:
    /// another lookup rule).
    pub fn parse(output: &str) -> Option<SearchPath> {
        let macros = output
            .lines()
            .filter_map(|l| l.strip_prefix("#define "))
            .filter_map(|l| identifier(l.as_bytes()))
            .map(str::to_string)
            .collect();
        let (mut quote, mut bracket) = (Vec::new(), Vec::new());
        let mut into: Option<&mut Vec<String>> = None;
        let mut ended = false;
        for line in output.lines() {
            if line.starts_with("#include \"...\" search starts here") {
                into = Some(&mut quote);
            } else if line.starts_with("#include <...> search starts here") {
                into = Some(&mut bracket);
            } else if line.starts_with("End of search list") {
                ended = true;
                break;
            } else if let Some(v) = into.as_deref_mut() {
                let dir = line.strip_prefix(' ')?;
                if dir.ends_with("(framework directory)") || dir.is_empty() {
                    return None;
                }
                v.push(dir.to_string());
            }
        }
        ended.then_some(SearchPath {
            quote,
            bracket,
            macros,
        })
    }
}

/// Whether this compile may be scanned at all.
pub(crate) fn applicable(c: &Compile) -> bool {
    !SEARCH_ENV.iter().any(|v| std::env::var_os(v).is_some())
        && !c
            .base
            .iter()
            .any(|a| a == "-I-" || a.starts_with("-include-pch") || a.starts_with("-fmodules"))
}

/// The arguments that make the compiler print its search path and macros
/// for this compile: the user's, with the input replaced by an empty one.
fn probe_args(c: &Compile) -> Option<Vec<String>> {
    let at = c.base.iter().rposition(|a| *a == c.input)?;
    let lang = match c.lang {
        Lang::C => "c",
        Lang::Cxx => "c++",
        Lang::AsmCpp => "assembler-with-cpp",
        Lang::Asm => return None,
    };
    let mut v = c.base[..at].to_vec();
    v.extend(["-x".into(), lang.into(), "/dev/null".into()]);
    v.extend(c.base[at + 1..].iter().cloned());
    v.extend(["-E".into(), "-dM".into(), "-v".into()]);
    Some(v)
}

/// The search path of this compile, from `cache_dir` or by asking the
/// compiler (then remembered there, under the compiler's `identity`, its
/// toolchain id, so that an upgraded compiler is asked again). The compiler
/// runs with `env` only, the environment the sandboxed compile will have.
pub(crate) fn search_path(
    compiler: &Path,
    identity: &str,
    c: &Compile,
    cwd: &Path,
    env: &[(String, String)],
    cache_dir: &Path,
) -> Option<SearchPath> {
    let args = probe_args(c)?;
    let key = {
        let what = (compiler, identity, cwd, &args, env);
        let bytes = swarmcc_protocol::frame::encode(&what).ok()?;
        blake3::hash(&bytes).to_hex().to_string()
    };
    let file = cache_dir.join(&key);
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Some(sp) = SearchPath::parse(&text) {
            return Some(sp);
        }
    }
    let out = Command::new(compiler)
        .args(&args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut text = String::from_utf8(out.stdout).ok()?;
    text.push_str(std::str::from_utf8(&out.stderr).ok()?);
    let sp = SearchPath::parse(&text)?;
    // Kept atomically; the directory is emptied when it grows past a few
    // thousand flag sets.
    crate::files::keep_file(cache_dir, &key, text.as_bytes(), 4096);
    Some(sp)
}

/// Where a file was found, which decides where `#include_next` goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Found {
    /// The main file, an absolute name, or a `-include`: `#include_next`
    /// acts as `#include`.
    Plain,
    /// In the including file's own directory (gcc goes on with the quote
    /// chain after it).
    CurDir,
    /// In the search chain (quote, then bracket directories) at this index.
    Chain(usize),
}

/// The main file and every file it may include, each as the compiler would
/// find it first on this machine, at its absolute, lexically normalized path
/// (as the builder will lay it out). A file `info` knows unchanged is not
/// read. `None`: the scan cannot vouch for a guess.
pub fn scan(c: &Compile, cwd: &Path, sp: &SearchPath, info: &mut FileInfo) -> Option<Vec<File>> {
    let chain: Vec<&String> = sp.chain().collect();
    let mut files: Vec<File> = Vec::new();
    let mut index: HashMap<PathBuf, Vec<Include>> = HashMap::new();
    let (mut assumed, mut defined) = (HashSet::new(), HashSet::new());
    let mut seen: HashSet<(PathBuf, Found)> = HashSet::new();
    let mut bytes = 0usize;
    let fs = &mut Lookups {
        cwd,
        known: HashMap::new(),
    };
    // (name as the compiler spells it, how it was found)
    let mut todo = starting_points(c, fs, &chain, sp.quote.len())?;
    let first_bracket = sp.quote.len();
    while let Some((spelled, how)) = todo.pop_front() {
        let abs = crate::sources::absolute(cwd, &spelled);
        if !seen.insert((abs.clone(), how)) {
            continue;
        }
        if !index.contains_key(&abs) {
            let on_disk = cwd.join(&spelled);
            let stamp = match fs.stamp(&spelled) {
                Some(stamp) => stamp,
                None => Stamp::of(&std::fs::metadata(&on_disk).ok()?),
            };
            bytes += stamp.size() as usize;
            if files.len() >= MAX_FILES || bytes > MAX_BYTES {
                return None;
            }
            let (known, data) = info.known(&abs, &on_disk, stamp, true)?;
            let d = known.directives?.ok()?;
            assumed.extend(d.assumed_undefined);
            defined.extend(d.defines);
            index.insert(abs.clone(), d.includes);
            files.push(File {
                path: abs.clone(),
                hash: known.hash,
                clock: known.clock,
                data,
            });
        }
        let incs = index.get(&abs).map(Vec::as_slice).unwrap_or_default();
        for inc in incs {
            if let Some(h) = follow(fs, &chain, first_bracket, &spelled, how, inc)? {
                todo.push_back(h);
            }
        }
    }
    // The blocks skipped for a macro are dead only if nothing defines it.
    if assumed
        .iter()
        .any(|m: &String| sp.macros.contains(m) || defined.contains(&name_hash(m)))
    {
        return None;
    }
    Some(files)
}

/// Where the scan starts: the unit, gcc's `<stdc-predef.h>`, and the
/// `-include`/`-imacros` files.
fn starting_points(
    c: &Compile,
    fs: &mut Lookups<'_>,
    chain: &[&String],
    first_bracket: usize,
) -> Option<VecDeque<(String, Found)>> {
    let mut todo = VecDeque::new();
    todo.push_back((c.input.clone(), Found::Plain));
    // gcc reads `<stdc-predef.h>` before the unit when it exists, silently
    // going without it otherwise: the sandbox must have it too.
    if let Some(found) = lookup(fs, chain, first_bracket, "stdc-predef.h")? {
        todo.push_back(found);
    }
    // `-include x.h` is looked up in the working directory first, then as
    // `#include "x.h"`.
    let mut it = c.base.iter();
    while let Some(a) = it.next() {
        if a == "-include" || a == "-imacros" {
            let name = it.next()?;
            if Path::new(name).is_absolute() {
                fs.exists(name)?.then_some(())?;
                todo.push_back((name.clone(), Found::Plain));
            } else {
                todo.push_back(resolve_quoted(fs, chain, "./", name)??);
            }
        } else if a.starts_with("-include") || a.starts_with("-imacros") {
            return None;
        }
    }
    Some(todo)
}

/// The file an include of the file `spelled` (found `how`) names, if the
/// compiler would find one; `None` when the scan cannot tell.
fn follow(
    fs: &mut Lookups<'_>,
    chain: &[&String],
    first_bracket: usize,
    spelled: &str,
    how: Found,
    inc: &Include,
) -> Option<Option<(String, Found)>> {
    if Path::new(&inc.name).is_absolute() {
        let found = is_file(Path::new(&inc.name)).then(|| (inc.name.clone(), Found::Plain));
        return Some(found);
    }
    let dir = match spelled.rfind('/') {
        Some(i) => &spelled[..=i],
        None => "",
    };
    let start = match (inc.next, how) {
        (true, Found::Chain(i)) => Some(i + 1),
        (true, Found::CurDir) => Some(0),
        _ if inc.angle => Some(first_bracket),
        _ => None,
    };
    match start {
        Some(from) => lookup(fs, chain, from, &inc.name),
        None => resolve_quoted(fs, chain, dir, &inc.name),
    }
}

/// `#include "name"` from a file in `dir`: that directory, then the chain.
fn resolve_quoted(
    fs: &mut Lookups<'_>,
    chain: &[&String],
    dir: &str,
    name: &str,
) -> Option<Option<(String, Found)>> {
    let here = format!("{dir}{name}");
    if fs.exists(&here)? {
        return Some(Some((here, Found::CurDir)));
    }
    lookup(fs, chain, 0, name)
}

/// The first `chain[from..]` directory holding `name`. `Some(None)`: none
/// does (a compile that needs it fails, and is redone the checked way);
/// `None`: the scan cannot tell.
fn lookup(
    fs: &mut Lookups<'_>,
    chain: &[&String],
    from: usize,
    name: &str,
) -> Option<Option<(String, Found)>> {
    for (i, dir) in chain.iter().enumerate().skip(from) {
        let spelled = if dir.ends_with('/') {
            format!("{dir}{name}")
        } else {
            format!("{dir}/{name}")
        };
        if fs.exists(&spelled)? {
            return Some(Some((spelled, Found::Chain(i))));
        }
    }
    Some(None)
}

/// [`exists_checked`] answers, remembered: units include the same names
/// from many headers, and each miss in a search directory is a `stat`.
struct Lookups<'a> {
    cwd: &'a Path,
    /// `spelled` -> whether it is a file, with its stamp when it is one (the
    /// scan needs that next, and need not `stat` it again).
    known: HashMap<String, Option<Option<Stamp>>>,
}

impl Lookups<'_> {
    fn exists(&mut self, spelled: &str) -> Option<bool> {
        let k = match self.known.get(spelled) {
            Some(&k) => k,
            None => {
                let k = exists_checked(self.cwd, spelled);
                self.known.insert(spelled.to_string(), k);
                k
            }
        };
        k.map(|stamp| stamp.is_some())
    }

    /// The stamp [`Lookups::exists`] took of `spelled`, if it found a file.
    fn stamp(&self, spelled: &str) -> Option<Stamp> {
        self.known.get(spelled).copied().flatten().flatten()
    }
}

/// Whether the compiler would open `spelled` (relative to `cwd`) as a file,
/// and its stamp if so. `None` when the answer would not carry over to the
/// builder: a precompiled header beside it (the compiler would read that
/// instead), or a `..` whose physical target differs from the lexical one
/// the builder lays out.
fn exists_checked(cwd: &Path, spelled: &str) -> Option<Option<Stamp>> {
    let raw = cwd.join(spelled);
    let meta = match std::fs::metadata(&raw) {
        Ok(m) if m.is_file() => m,
        _ => return Some(None),
    };
    let mut gch = raw.clone().into_os_string();
    gch.push(".gch");
    if Path::new(&gch).exists() {
        return None;
    }
    if raw.components().any(|c| c == Component::ParentDir) {
        let lexical = crate::sources::absolute(cwd, spelled);
        if std::fs::canonicalize(&raw).ok()? != std::fs::canonicalize(&lexical).ok()? {
            return None;
        }
    }
    Some(Some(Stamp::of(&meta)))
}

fn is_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_from_dash_v() {
        let out =
            "#define __GNUC__ 12\n#define FOO(x) x\nignoring nonexistent directory \"/nope\"\n\
                   #include \"...\" search starts here:\n q1\n#include <...> search starts here:\n \
                   inc\n /usr/include\nEnd of search list.\n";
        let sp = SearchPath::parse(out).unwrap();
        assert_eq!(sp.quote, vec!["q1"]);
        assert_eq!(sp.bracket, vec!["inc", "/usr/include"]);
        assert!(sp.macros.contains("__GNUC__") && sp.macros.contains("FOO"));
        assert!(SearchPath::parse("#include <...> search starts here:\n /a\n").is_none());
        assert!(SearchPath::parse(
            "#include <...> search starts here:\n /S/Frameworks (framework directory)\nEnd of search list.\n"
        )
        .is_none());
    }

    fn write(dir: &Path, name: &str, text: &str) {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn compile(input: &str, extra: &[&str]) -> Compile {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(["-c".into(), input.into()]);
        crate::args::parse(crate::args::Kind::Gcc, &args).unwrap()
    }

    fn paths(files: &[File], root: &Path) -> Vec<String> {
        files
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    /// The file each name resolves to is the one gcc would open first:
    /// the includer's directory for quotes, then the chain in order;
    /// `#include_next` goes on after the directory the includer came from.
    #[test]
    fn lookup_follows_the_compilers_order() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        write(
            d,
            "src/main.c",
            "#include \"local.h\"\n#include <x.h>\n#include \"y.h\"\n",
        );
        write(d, "src/local.h", "");
        write(
            d,
            "q/local.h",
            "never: the includer's directory comes first",
        );
        write(d, "a/x.h", "#include_next <x.h>\n");
        write(d, "b/x.h", "#include_next <x.h>\n");
        write(d, "c/x.h", "");
        write(d, "q/y.h", "#include \"z.h\"\n");
        write(d, "b/z.h", "");
        write(d, "c/unused.h", "");
        let sp = SearchPath {
            quote: vec!["q".into()],
            bracket: vec!["a".into(), "b".into(), "c".into()],
            macros: HashSet::new(),
        };
        let c = compile("src/main.c", &[]);
        let files = scan(&c, d, &sp, &mut FileInfo::none()).unwrap();
        assert_eq!(
            paths(&files, d),
            vec![
                "src/main.c",
                "src/local.h",
                "a/x.h",
                "q/y.h",
                "b/x.h",
                "b/z.h",
                "c/x.h"
            ]
        );
        assert_eq!(files[1].data.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn lookups_pass_over_what_the_compiler_would_not_open() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        write(
            d,
            "m.c",
            "#include <sub/h.h>\n#include <dir.h>\n#include <link.h>\n#include <gone.h>\n",
        );
        // `a/sub` is a file, `b` has no `sub`: both are passed over.
        write(d, "a/sub", "");
        write(d, "c/sub/h.h", "");
        // A directory named like a header is not one.
        std::fs::create_dir_all(d.join("a/dir.h")).unwrap();
        write(d, "b/dir.h", "");
        // A link to a header is found where the link is; a dangling one is
        // passed over.
        write(d, "c/real.h", "");
        std::os::unix::fs::symlink("../c/real.h", d.join("a/link.h")).unwrap();
        std::os::unix::fs::symlink("../c/none.h", d.join("a/gone.h")).unwrap();
        write(d, "b/gone.h", "");
        let sp = SearchPath {
            quote: vec![],
            bracket: vec!["a".into(), "b".into(), "c".into()],
            macros: HashSet::new(),
        };
        let files = scan(&compile("m.c", &[]), d, &sp, &mut FileInfo::none()).unwrap();
        assert_eq!(
            paths(&files, d),
            vec!["m.c", "c/sub/h.h", "b/dir.h", "a/link.h", "b/gone.h"]
        );
    }

    #[test]
    fn give_up_where_the_builder_could_see_another_file() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let sp = SearchPath {
            quote: vec![],
            bracket: vec!["inc".into()],
            macros: ["PREDEFINED".to_string()].into_iter().collect(),
        };
        // A precompiled header beside a header: gcc would read that instead.
        write(d, "m.c", "#include <p.h>\n");
        write(d, "inc/p.h", "");
        assert!(scan(&compile("m.c", &[]), d, &sp, &mut FileInfo::none()).is_some());
        write(d, "inc/p.h.gch", "");
        assert!(scan(&compile("m.c", &[]), d, &sp, &mut FileInfo::none()).is_none());
        // A computed include under a macro that something defines.
        write(
            d,
            "n.c",
            "#include <q.h>\n#ifdef USER_H\n#include USER_H\n#endif\n",
        );
        write(d, "inc/q.h", "");
        assert!(scan(&compile("n.c", &[]), d, &sp, &mut FileInfo::none()).is_some());
        write(d, "inc/q.h", "#define USER_H \"evil.h\"\n");
        assert!(scan(&compile("n.c", &[]), d, &sp, &mut FileInfo::none()).is_none());
        write(d, "inc/q.h", "");
        write(d, "o.c", "#ifdef PREDEFINED\n#include PREDEFINED\n#endif\n");
        assert!(scan(&compile("o.c", &[]), d, &sp, &mut FileInfo::none()).is_none());
        // `-I-` changes the quote rules.
        assert!(!applicable(&compile("m.c", &["-I-"])));
        assert!(applicable(&compile("m.c", &["-Iinc"])));
    }

    #[test]
    fn forced_includes_and_predef_are_carried() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let sp = SearchPath {
            quote: vec![],
            bracket: vec!["sys".into()],
            macros: HashSet::new(),
        };
        write(d, "m.c", "int x;\n");
        write(d, "force.h", "#include <more.h>\n");
        write(d, "sys/more.h", "");
        write(d, "sys/stdc-predef.h", "");
        let files = scan(
            &compile("m.c", &["-include", "force.h"]),
            d,
            &sp,
            &mut FileInfo::none(),
        )
        .unwrap();
        assert_eq!(
            paths(&files, d),
            vec!["m.c", "sys/stdc-predef.h", "force.h", "sys/more.h"]
        );
        // A forced include that does not exist: gcc fails, so no guess.
        assert!(scan(
            &compile("m.c", &["-include", "nope.h"]),
            d,
            &sp,
            &mut FileInfo::none()
        )
        .is_none());
        // An absolute one is taken as it is.
        let abs = d.join("force.h");
        let files = scan(
            &compile("m.c", &["-include", abs.to_str().unwrap()]),
            d,
            &sp,
            &mut FileInfo::none(),
        )
        .unwrap();
        assert_eq!(
            paths(&files, d),
            vec!["m.c", "sys/stdc-predef.h", "force.h", "sys/more.h"]
        );
    }

    /// Against the real compiler: every file gcc's own dependency list names
    /// is in the guess, at the same path.
    #[test]
    fn the_guess_covers_what_gcc_reads() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        write(
            d,
            "u.c",
            "#include <stdio.h>\n#include <limits.h>\n#include <stdint.h>\n#include \"h/a.h\"\nint main(void) { return A; }\n",
        );
        write(d, "h/a.h", "#include \"b.h\"\n#define A B\n");
        write(d, "h/b.h", "#define B 0\n");
        let c = compile("u.c", &["-O2"]);
        let env = [("PATH".to_string(), "/usr/bin:/bin".to_string())];
        let probes = d.join("probes");
        let sp = search_path(Path::new("gcc"), "gcc", &c, d, &env, &probes).unwrap();
        assert!(sp.macros.contains("__GNUC__"));
        assert_eq!(
            search_path(Path::new("gcc"), "gcc", &c, d, &env, &probes),
            Some(sp.clone()),
            "remembered"
        );
        let files = scan(&c, d, &sp, &mut FileInfo::none()).unwrap();
        let out = Command::new("gcc")
            .args(["-O2", "-M", "u.c"])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(out.status.success());
        let guessed: HashSet<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        let deps = String::from_utf8(out.stdout).unwrap();
        let deps: Vec<&str> = deps
            .split_whitespace()
            .filter(|w| !w.ends_with(':') && *w != "\\")
            .collect();
        assert!(deps.len() > 10, "{deps:?}");
        for dep in deps {
            let abs = crate::sources::absolute(d, dep);
            assert!(guessed.contains(&abs), "{dep} missing from the guess");
        }
    }
}
