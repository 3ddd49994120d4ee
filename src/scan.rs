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
use crate::fileinfo::{File, FileInfo, Stamp};
use serde::{Deserialize, Serialize};
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
pub fn applicable(c: &Compile) -> bool {
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
pub fn search_path(
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
    crate::wrapper::keep_file(cache_dir, &key, text.as_bytes(), 4096);
    Some(sp)
}

/// One `#include`-like reference in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Include {
    pub name: String,
    pub angle: bool,
    /// `#include_next` / `__has_include_next`.
    pub next: bool,
}

/// Why a file cannot be scanned: a name only the preprocessor can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unresolvable;

/// What the scanner reads out of one file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directives {
    /// Every include directive and `__has_include` test, in any branch of
    /// any conditional (and, harmlessly, in comments), except those in a
    /// block taken only when a macro is defined that nothing defines.
    pub includes: Vec<Include>,
    /// Macros whose blocks were skipped: `#ifdef X` / `#if defined(X)` with
    /// a computed `#include` inside, as Lua's `#include LUA_USER_H`. The
    /// skip holds only if no scanned file, command-line option or compiler
    /// predefines them.
    pub assumed_undefined: Vec<String>,
    /// Every macro name a `#define` in the file defines (in any branch), as
    /// [`name_hash`]es: a collision only makes the scan give up.
    pub defines: Vec<u64>,
}

/// The directives of a file that decide what it may include.
pub fn directives(text: &[u8]) -> Result<Directives, Unresolvable> {
    let text = code(text)?;
    let has = memchr::memmem::Finder::new(b"__has_include");
    let mut out = Directives::default();
    // Per open conditional: the macro whose absence would make this block
    // dead (only for `#ifdef X` / `#if defined(X)`, until `#else`/`#elif`).
    let mut open: Vec<Option<String>> = Vec::new();
    for rest in directive_lines(&text) {
        let rest = skip_ws(rest);
        let word_len = rest
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
            .count();
        let (word, after) = rest.split_at(word_len);
        match word {
            b"ifdef" => open.push(identifier(skip_ws(after)).map(str::to_string)),
            b"if" => open.push(defined_only(after)),
            b"ifndef" => open.push(None),
            b"else" | b"elif" => {
                if let Some(top) = open.last_mut() {
                    *top = None;
                }
            }
            b"endif" => {
                open.pop();
            }
            b"define" => {
                if let Some(name) = identifier(skip_ws(after)) {
                    out.defines.push(name_hash(name));
                }
            }
            b"include" | b"include_next" | b"import" => {
                let next = word == b"include_next";
                match header_name(skip_ws(after)) {
                    Some((name, angle)) => out.includes.push(Include { name, angle, next }),
                    None => {
                        // A computed name: fine only in a block whose macro
                        // turns out to be defined nowhere.
                        let innermost = open.iter().rev().find_map(|m| m.clone());
                        match innermost {
                            Some(m) => out.assumed_undefined.push(m),
                            None => return Err(Unresolvable),
                        }
                    }
                }
            }
            _ => {}
        }
        if word != b"include" && word != b"include_next" && word != b"import" {
            has_include(rest, &has, &mut out.includes)?;
        }
    }
    Ok(out)
}

/// `text` with every backslash-newline removed (borrowed when it has none).
fn splice(text: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let spliced_at = |at: usize| match &text[at + 1..] {
        [b'\n', ..] => Some(2),
        [b'\r', b'\n', ..] => Some(3),
        _ => None,
    };
    if !memchr::memchr_iter(b'\\', text).any(|at| spliced_at(at).is_some()) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut t = Vec::with_capacity(text.len());
    let mut i = 0;
    while let Some(at) = memchr::memchr(b'\\', &text[i..]) {
        let at = i + at;
        match spliced_at(at) {
            Some(n) => {
                t.extend_from_slice(&text[i..at]);
                i = at + n;
            }
            None => {
                t.extend_from_slice(&text[i..=at]);
                i = at + 1;
            }
        }
    }
    t.extend_from_slice(&text[i..]);
    std::borrow::Cow::Owned(t)
}

/// The rest of every line whose first non-blank character is `#` (after
/// that `#`). Found from the `#`s rather than line by line: headers have
/// many lines and few directives.
fn directive_lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    memchr::memchr_iter(b'#', text).filter_map(move |at| {
        let start = memchr::memrchr(b'\n', &text[..at]).map_or(0, |n| n + 1);
        if !text[start..at].iter().all(|&b| b == b' ' || b == b'\t') {
            return None;
        }
        let end = memchr::memchr(b'\n', &text[at..]).map_or(text.len(), |n| at + n);
        Some(&text[at + 1..end])
    })
}

/// The text as the directive parser sees it: lines spliced at
/// backslash-newlines, every comment replaced by one space (a comment over
/// several lines does not end a directive), strings and character literals
/// kept. A commented-out `#include` must not count, and a `/*` inside a
/// string must not hide the directives after it: missing a real include is
/// the one mistake the builder's proof cannot catch. Raw string literals
/// and trigraphs are not followed: such files are not scanned.
fn code(text: &[u8]) -> Result<Vec<u8>, Unresolvable> {
    if memchr::memmem::find(text, b"??/").is_some() {
        return Err(Unresolvable);
    }
    // Splice lines, copying the spans between backslashes.
    let t = splice(text);
    // Drop comments, copying the spans between the bytes that may start a
    // comment or a literal.
    let mut out = Vec::with_capacity(t.len());
    let comment_end = memchr::memmem::Finder::new(b"*/");
    let mut i = 0;
    while let Some(at) = memchr::memchr3(b'/', b'"', b'\'', &t[i..]) {
        let at = i + at;
        out.extend_from_slice(&t[i..at]);
        let b = t[at];
        match (b, t.get(at + 1)) {
            (b'/', Some(b'*')) => {
                let end = comment_end.find(&t[at + 2..]).ok_or(Unresolvable)?;
                out.push(b' ');
                i = at + 2 + end + 2;
            }
            (b'/', Some(b'/')) => {
                let end = memchr::memchr(b'\n', &t[at..]).unwrap_or(t.len() - at);
                out.push(b' ');
                i = at + end;
            }
            (b'/', _) => {
                out.push(b);
                i = at + 1;
            }
            _ => {
                // The identifier or number right before the quote tells a
                // raw string (`R"(`) and a digit separator (`1'000`) from a
                // literal with a prefix (`u8'x'`, `L"x"`).
                let word_len = t[..at]
                    .iter()
                    .rev()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                    .count();
                let word = &t[at - word_len..at];
                if b == b'"' && matches!(word, b"R" | b"LR" | b"uR" | b"UR" | b"u8R") {
                    return Err(Unresolvable);
                }
                if b == b'\'' && word.first().is_some_and(|c| c.is_ascii_digit()) {
                    out.push(b);
                    i = at + 1;
                    continue;
                }
                // A literal: up to the unescaped closing quote or the line's end.
                let mut j = at + 1;
                while j < t.len() && t[j] != b'\n' {
                    if t[j] == b'\\' && j + 1 < t.len() && t[j + 1] != b'\n' {
                        j += 2;
                        continue;
                    }
                    j += 1;
                    if t[j - 1] == b {
                        break;
                    }
                }
                out.extend_from_slice(&t[at..j]);
                i = j;
            }
        }
    }
    out.extend_from_slice(&t[i..]);
    Ok(out)
}

/// `__has_include(<x.h>)` in a directive line: its answer depends on the
/// file's existence, so the file is part of the guess. A bare
/// `#ifdef __has_include` tests for the feature and is skipped.
fn has_include(
    line: &[u8],
    finder: &memchr::memmem::Finder<'_>,
    into: &mut Vec<Include>,
) -> Result<(), Unresolvable> {
    let mut s = line;
    while let Some(at) = finder.find(s) {
        let mut after = &s[at + b"__has_include".len()..];
        let next = if let Some(r) = after.strip_prefix(b"_next") {
            after = r;
            true
        } else {
            false
        };
        s = after;
        if after
            .first()
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_')
        {
            continue;
        }
        let Some(arg) = skip_ws(after).strip_prefix(b"(") else {
            continue;
        };
        let (name, angle) = header_name(skip_ws(arg)).ok_or(Unresolvable)?;
        into.push(Include { name, angle, next });
    }
    Ok(())
}

/// FNV-1a of a macro name.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A C identifier at the start of `s`.
fn identifier(s: &[u8]) -> Option<&str> {
    let n = s
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    if n == 0 || s[0].is_ascii_digit() {
        return None;
    }
    std::str::from_utf8(&s[..n]).ok()
}

/// The `X` of an `#if` condition that is exactly `defined(X)` or
/// `defined X` (with nothing but blanks or a comment after).
fn defined_only(cond: &[u8]) -> Option<String> {
    let s = skip_ws(cond).strip_prefix(b"defined")?;
    let s = skip_ws(s);
    let (name, rest) = match s.strip_prefix(b"(") {
        Some(inner) => {
            let inner = skip_ws(inner);
            let name = identifier(inner)?;
            let rest = skip_ws(&inner[name.len()..]).strip_prefix(b")")?;
            (name, rest)
        }
        None => {
            let name = identifier(s)?;
            (name, &s[name.len()..])
        }
    };
    let rest = skip_ws(rest);
    let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
    (rest.is_empty() || rest.starts_with(b"/*") || rest.starts_with(b"//"))
        .then(|| name.to_string())
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[n..]
}

/// `"name"` or `<name>` at the start of `s`.
fn header_name(s: &[u8]) -> Option<(String, bool)> {
    let (close, angle) = match s.first()? {
        b'"' => (b'"', false),
        b'<' => (b'>', true),
        _ => return None,
    };
    let body = &s[1..];
    let end = body.iter().position(|&b| b == close || b == b'\n')?;
    if body[end] != close || end == 0 {
        return None;
    }
    let name = std::str::from_utf8(&body[..end]).ok()?;
    Some((name.to_string(), angle))
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
    let mut todo: VecDeque<(String, Found)> = VecDeque::new();
    todo.push_back((c.input.clone(), Found::Plain));
    // gcc reads `<stdc-predef.h>` before the unit when it exists, silently
    // going without it otherwise: the sandbox must have it too.
    if let Some(found) = lookup(fs, &chain, sp.quote.len(), "stdc-predef.h")? {
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
                todo.push_back(resolve_quoted(fs, &chain, "./", name)??);
            }
        } else if a.starts_with("-include") || a.starts_with("-imacros") {
            return None;
        }
    }
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
        let dir = match spelled.rfind('/') {
            Some(i) => &spelled[..=i],
            None => "",
        };
        for inc in incs {
            if Path::new(&inc.name).is_absolute() {
                if is_file(Path::new(&inc.name)) {
                    todo.push_back((inc.name.clone(), Found::Plain));
                }
                continue;
            }
            let start = match (inc.next, how) {
                (true, Found::Chain(i)) => Some(i + 1),
                (true, Found::CurDir) => Some(0),
                _ if inc.angle => Some(first_bracket),
                _ => None,
            };
            let hit = match start {
                Some(from) => lookup(fs, &chain, from, &inc.name)?,
                None => resolve_quoted(fs, &chain, dir, &inc.name)?,
            };
            if let Some(h) = hit {
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

    fn names(text: &str) -> Vec<(String, bool, bool)> {
        directives(text.as_bytes())
            .unwrap()
            .includes
            .into_iter()
            .map(|i| (i.name, i.angle, i.next))
            .collect()
    }

    fn inc(name: &str, angle: bool, next: bool) -> (String, bool, bool) {
        (name.to_string(), angle, next)
    }

    #[test]
    fn directives_in_every_branch_but_not_in_comments_or_strings() {
        let text = r#"
#include "a.h"
  #  include <b.h> // trailing
#if 0
#include "c.h"
#else
# include_next <d.h>
#endif
/* #include "no1.h"
#include "no2.h" */
// #include "no3.h"
const char *s = "/* not a comment";
#include "e.h"
#define X '"'
#include "f.h"
int n = 1'000'000; /* digit separators
#include "no4.h" */
#include \
  "g.h"
#if defined(__has_include) && __has_include(<h.h>) || __has_include_next("i.h")
#endif
#ifdef __has_include
#endif
#includes "no5.h"
#import "j.h"
"#;
        assert_eq!(
            names(text),
            vec![
                inc("a.h", false, false),
                inc("b.h", true, false),
                inc("c.h", false, false),
                inc("d.h", true, true),
                inc("e.h", false, false),
                inc("f.h", false, false),
                inc("g.h", false, false),
                inc("h.h", true, false),
                inc("i.h", false, true),
                inc("j.h", false, false),
            ]
        );
    }

    #[test]
    fn computed_names_give_up_unless_in_a_block_of_an_undefined_macro() {
        assert_eq!(directives(b"#include HEADER\n"), Err(Unresolvable));
        assert_eq!(
            directives(b"#if X\n#include HEADER\n#endif\n"),
            Err(Unresolvable)
        );
        assert_eq!(
            directives(b"#ifdef X\n#else\n#include HEADER\n#endif\n"),
            Err(Unresolvable)
        );
        assert_eq!(
            directives(b"#if __has_include(HDR)\n#endif\n"),
            Err(Unresolvable)
        );
        for text in [
            "#if defined(USER_H)\n#include USER_H\n#endif\n",
            "#if defined USER_H /* why */\n#include USER_H\n#endif\n",
            "#ifdef USER_H\n#if 1\n#include USER_H\n#endif\n#endif\n",
        ] {
            let d = directives(text.as_bytes()).unwrap();
            assert_eq!(d.assumed_undefined, vec!["USER_H".to_string()], "{text}");
        }
        let d = directives(b"#define A 1\n#  define B(x) x\n#undef C\n").unwrap();
        assert_eq!(d.defines, vec![name_hash("A"), name_hash("B")]);
    }

    #[test]
    fn raw_strings_trigraphs_and_open_comments_are_not_guessed() {
        assert!(directives(b"auto s = R\"(\n#include \"x.h\"\n)\";\n").is_err());
        assert!(directives(b"auto s = u8R\"(x)\";\n").is_err());
        assert!(directives(b"??/\n").is_err());
        assert!(directives(b"/* never closed\n").is_err());
        // An identifier ending in R is no raw string.
        assert_eq!(
            names("#define P LUA_CDIR\"x\"\n#include \"y.h\"\n"),
            vec![inc("y.h", false, false)]
        );
    }

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
