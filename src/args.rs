//! gcc/clang command-line analysis: what a compile reads and writes, and
//! whether it can be distributed. Anything this cannot vouch for runs locally,
//! with the reason counted.

use std::path::Path;
use swarmcc_protocol::stats::LocalReason;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gcc,
    Clang,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    C,
    Cxx,
    /// `.S`: preprocessed like C, then assembled.
    AsmCpp,
    /// `.s`: assembled as it is; no preprocessor runs, so no dependency
    /// file is written.
    Asm,
}

/// A compile that can be distributed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compile {
    pub input: String,
    /// The object path as the user gave it (or gcc's default).
    pub output: String,
    pub lang: Lang,
    /// The user's arguments in their order, without `-c`, `-o <file>` and the
    /// dependency-file flags: the builder compiles with exactly these (plus
    /// `-c -o`), and the client preprocesses with them (plus `-E`).
    pub base: Vec<String>,
    /// Dependency-file flags, completed so that preprocessing alone writes
    /// the same file a local compile would.
    pub deps: Vec<String>,
    /// The compiler it is for.
    pub kind: Kind,
    /// Colour in diagnostics, as the command line asks (its flags are kept
    /// out of `base`, so out of the cache key).
    pub color: Color,
    /// Whether the object records the command line (gcc's debug
    /// information does by default, clang's with `-grecord-command-line`;
    /// both with `-frecord-gcc-switches`): then no flag is added to it that
    /// the compiler would record, or the object would differ from a local
    /// compile's.
    pub records_command_line: bool,
    /// The user chose gcc's `-fdiagnostics-urls=` (kept in `base`).
    pub urls_explicit: bool,
}

/// Colour in diagnostics. As ccache does, a compile always asks the
/// compiler for colour ([`Compile::diagnostics_flags`]), and the colour is
/// taken out where a local compile would have printed none
/// ([`Compile::local_diagnostics`]): coloured and plain builds share cache
/// entries, and each prints what the compiler alone would.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Color {
    /// The compiler's default: colour on a terminal.
    #[default]
    Auto,
    Always,
    Never,
}

/// Whether gcc's `-fdiagnostics-urls=auto` prints links here: gcc's own
/// test (`auto_enable_urls`, gcc 10-14): a terminal it would colour, not a
/// terminal known to print them as garbage.
fn gcc_would_link() -> bool {
    let var = |k: &str| std::env::var(k).ok();
    let term = var("TERM");
    let colorterm = var("COLORTERM");
    if !std::io::IsTerminal::is_terminal(&std::io::stderr())
        || term.as_deref().is_none_or(|t| t == "dumb")
    {
        return false;
    }
    if matches!(
        colorterm.as_deref(),
        Some("xfce4-terminal" | "gnome-terminal")
    ) {
        return false;
    }
    if var("GCC_URLS").is_some() || var("TERM_URLS").is_some() {
        return true;
    }
    if colorterm.is_none() && matches!(term.as_deref(), Some("xterm" | "vt100")) {
        return false;
    }
    term.as_deref() != Some("linux")
}

/// Remove OSC 8 hyperlinks (`ESC ] 8 ; params ; uri`, ended by BEL or
/// `ESC \`), keeping the text they wrap.
pub(crate) fn strip_links(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with(b"\x1b]8;") {
            let mut j = i + 4;
            let end = loop {
                match text.get(j) {
                    None => break None,
                    Some(0x07) => break Some(j + 1),
                    Some(0x1b) if text.get(j + 1) == Some(&b'\\') => break Some(j + 2),
                    Some(_) => j += 1,
                }
            };
            if let Some(end) = end {
                i = end;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// Remove the colour a compiler put in its diagnostics: SGR (`ESC[...m`)
/// and erase-in-line (`ESC[...K`) sequences, the only ones gcc and clang
/// write.
pub(crate) fn strip_color(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == 0x1b && text.get(i + 1) == Some(&b'[') {
            let mut j = i + 2;
            while j < text.len() && (text[j].is_ascii_digit() || text[j] == b';') {
                j += 1;
            }
            if matches!(text.get(j), Some(b'm' | b'K')) {
                i = j + 1;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// Options that take their value as the next argument.
const TAKES_ARG: &[&str] = &[
    "-o",
    "-x",
    "-I",
    "-isystem",
    "-iquote",
    "-idirafter",
    "-include",
    "-imacros",
    "-iprefix",
    "-iwithprefix",
    "-iwithprefixbefore",
    "-isysroot",
    "-D",
    "-U",
    "-MF",
    "-MT",
    "-MQ",
    "-Xpreprocessor",
    "-Xassembler",
    "-Xlinker",
    "-Xclang",
    "-aux-info",
    "--param",
    "-arch",
    "-target",
    "-L",
    "-l",
    "-T",
    "-u",
    "-z",
    "-B",
    "-specs",
    "-dumpbase",
    "-dumpdir",
];

/// Expand `@file` response files the way gcc does (whitespace separated,
/// quotes and backslash escapes), recursively with a depth bound.
pub(crate) fn expand_response_files(args: &[String], cwd: &Path) -> Result<Vec<String>, String> {
    fn go(args: &[String], cwd: &Path, depth: u32, out: &mut Vec<String>) -> Result<(), String> {
        for a in args {
            if let Some(file) = a.strip_prefix('@') {
                if depth > 16 {
                    return Err("response files nested too deeply".into());
                }
                let text = match std::fs::read_to_string(cwd.join(file)) {
                    Ok(t) => t,
                    // gcc keeps an unreadable @file as a literal argument.
                    Err(_) => {
                        out.push(a.clone());
                        continue;
                    }
                };
                go(&split_response(&text), cwd, depth + 1, out)?;
            } else {
                out.push(a.clone());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(args, cwd, 0, &mut out)?;
    Ok(out)
}

fn split_response(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

fn lang_of_ext(path: &str) -> Option<Lang> {
    let ext = Path::new(path).extension()?.to_str()?;
    match ext {
        "c" => Some(Lang::C),
        "cc" | "cp" | "cxx" | "cpp" | "CPP" | "c++" | "C" => Some(Lang::Cxx),
        "S" | "sx" => Some(Lang::AsmCpp),
        "s" => Some(Lang::Asm),
        _ => None,
    }
}

fn lang_of_x(x: &str) -> Option<Lang> {
    match x {
        "c" => Some(Lang::C),
        "c++" => Some(Lang::Cxx),
        "assembler-with-cpp" => Some(Lang::AsmCpp),
        "assembler" => Some(Lang::Asm),
        _ => None,
    }
}

/// Flags whose effect reaches files a job would not carry, or outputs
/// besides the object: these compiles run locally.
fn unsupported(a: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "-save-temps",
        "-gsplit-dwarf",
        "--coverage",
        "-ftest-coverage",
        "-fprofile-arcs",
        "-fprofile-use",
        "-fprofile-generate",
        "-fprofile-instr",
        "-fprofile-sample",
        "-fauto-profile",
        "-fcreate-profile",
        "-fbranch-probabilities",
        "-specs",
        "--specs",
        "-B",
        "-fplugin",
        "-fdump-",
        "-fsanitize-blacklist",
        "-fsanitize-ignorelist",
        "-fcallgraph-info",
        "-fstack-usage",
        "-Xassembler",
        "-Xclang",
        "-frandom-seed=@",
        "-fmodules",
        "-fmodule-",
        "-fopt-info",
        "-aux-info",
        "-fsave-optimization-record",
        "-ftime-trace",
        "-fcoverage",
        "-fsyntax-only",
        "-v",
        "--verbose",
        "-###",
        "-flto-partition",
        "-fdiagnostics-format=sarif-file",
        "-fdiagnostics-format=json-file",
    ];
    if PREFIXES.iter().any(|p| a.starts_with(p)) {
        return true;
    }
    // -Wa options that name files (listings, include dirs).
    if let Some(rest) = a.strip_prefix("-Wa,") {
        return rest.split(',').any(|p| {
            p.contains('=') || p.starts_with("-I") || p.starts_with("-a") || p.starts_with("@")
        });
    }
    false
}

/// Analyse a gcc/clang command line (after response-file expansion).
pub fn parse(kind: Kind, args: &[String]) -> Result<Compile, LocalReason> {
    let mut seen = Seen::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut next = || it.next().cloned().ok_or(LocalReason::UnsupportedFlag);
        seen.arg(a, &mut next)?;
    }
    seen.finish(kind)
}

/// What a command line said so far.
#[derive(Default)]
struct Seen {
    inputs: Vec<String>,
    output: Option<String>,
    explicit_x: Option<String>,
    compile: bool,
    base: Vec<String>,
    deps: Vec<String>,
    has_md: bool,
    has_mf: bool,
    has_target: bool,
    m_only: bool,
    color: Color,
    /// What the command line says of what the object records of it (see
    /// [`Compile::records_command_line`]).
    debug: bool,
    record_in_debug: Option<bool>,
    record_section: bool,
    urls_explicit: bool,
}

type Next<'a> = &'a mut dyn FnMut() -> Result<String, LocalReason>;

impl Seen {
    /// One argument; `next` takes the one after it (an option's value).
    fn arg(&mut self, a: &String, next: Next<'_>) -> Result<(), LocalReason> {
        if !a.starts_with('-') || a == "-" {
            if a == "-" {
                return Err(LocalReason::StdinInput);
            }
            self.inputs.push(a.clone());
            self.base.push(a.clone());
            return Ok(());
        }
        if unsupported(a) {
            tracing::debug!("unsupported flag {a}");
            return Err(LocalReason::UnsupportedFlag);
        }
        self.observe(a);
        match a.as_str() {
            "-fdiagnostics-color" | "-fdiagnostics-color=always" | "-fcolor-diagnostics" => {
                self.color = Color::Always
            }
            "-fdiagnostics-color=never" | "-fno-diagnostics-color" | "-fno-color-diagnostics" => {
                self.color = Color::Never
            }
            "-fdiagnostics-color=auto" => self.color = Color::Auto,
            "-c" => self.compile = true,
            "-E" | "-S" => return Err(LocalReason::PreprocessOnly),
            "-M" | "-MM" => self.m_only = true,
            "-MD" | "-MMD" => {
                self.has_md = true;
                self.deps.push(a.clone());
            }
            "-MP" | "-MG" => self.deps.push(a.clone()),
            "-MF" => {
                self.has_mf = true;
                self.deps.extend([a.clone(), next()?]);
            }
            "-MT" | "-MQ" => {
                self.has_target = true;
                self.deps.extend([a.clone(), next()?]);
            }
            "-o" => self.output = Some(next()?),
            "-x" => {
                let x = next()?;
                self.explicit_x = Some(x.clone());
                self.base.extend([a.clone(), x]);
            }
            _ => self.joined(a, next)?,
        }
        Ok(())
    }

    /// Note what an option says of debug information, of recording the
    /// command line into the object, and of gcc's links and plain output
    /// (the option itself goes on as usual).
    fn observe(&mut self, a: &str) {
        match a {
            "-g0" => self.debug = false,
            "-grecord-gcc-switches" | "-grecord-command-line" => self.record_in_debug = Some(true),
            "-gno-record-gcc-switches" | "-gno-record-command-line" => {
                self.record_in_debug = Some(false)
            }
            "-frecord-gcc-switches" | "-frecord-command-line" => self.record_section = true,
            "-fno-record-gcc-switches" | "-fno-record-command-line" => self.record_section = false,
            _ if a.starts_with("-fdiagnostics-urls") => self.urls_explicit = true,
            // gcc 11's plain output: no colour, no links (kept in `base`
            // for what else it changes).
            "-fdiagnostics-plain-output" => {
                self.color = Color::Never;
                self.urls_explicit = true;
            }
            _ => {
                if let Some(level) = a.strip_prefix("-g") {
                    let starts = |p: &str| level.starts_with(p);
                    if level.is_empty()
                        || level.starts_with(|c: char| c.is_ascii_digit())
                        || ["gdb", "dwarf", "stabs", "xcoff", "vms", "btf", "ctf"]
                            .iter()
                            .any(|p| starts(p))
                    {
                        self.debug = true;
                    }
                }
            }
        }
    }

    /// An option with its value joined (`-ofile`, `-MFfile`, `-xc`), a
    /// `-Wp,` dependency option, or one for the compile itself.
    fn joined(&mut self, a: &str, next: Next<'_>) -> Result<(), LocalReason> {
        if let Some(v) = a.strip_prefix("-o") {
            self.output = Some(v.to_string());
        } else if a.starts_with("-MF") || a.starts_with("-MT") || a.starts_with("-MQ") {
            if a.starts_with("-MF") {
                self.has_mf = true;
            } else {
                self.has_target = true;
            }
            self.deps.push(a.to_string());
        } else if a.starts_with("-Wp,-MD,") || a.starts_with("-Wp,-MMD,") {
            // The Linux kernel's style: preprocessor-only dependency output.
            self.has_md = true;
            self.has_mf = true;
            self.has_target = true;
            self.deps.push(a.to_string());
        } else {
            if let Some(v) = a.strip_prefix("-x") {
                self.explicit_x = Some(v.to_string());
            }
            self.base.push(a.to_string());
            if TAKES_ARG.contains(&a) {
                self.base.push(next()?);
            }
        }
        Ok(())
    }

    /// The compile the whole command line asks for, if it is one.
    fn finish(mut self, kind: Kind) -> Result<Compile, LocalReason> {
        if self.m_only && !self.has_md {
            return Err(LocalReason::PreprocessOnly);
        }
        if self.m_only {
            return Err(LocalReason::UnsupportedFlag);
        }
        if !self.compile {
            return Err(LocalReason::NotCompile);
        }
        let input = match self.inputs.len() {
            0 => return Err(LocalReason::NotCompile),
            1 => self.inputs.remove(0),
            _ => return Err(LocalReason::MultipleInputs),
        };
        let lang = match &self.explicit_x {
            Some(x) => lang_of_x(x).ok_or(LocalReason::UnknownLanguage)?,
            None => lang_of_ext(&input).ok_or(LocalReason::UnknownLanguage)?,
        };
        let stem = Path::new(&input)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("a")
            .to_string();
        let output = self.output.unwrap_or_else(|| format!("{stem}.o"));
        let mut deps = self.deps;
        // Preprocessing alone must write the dependency file a compile
        // would: gcc's driver derives its name from -o and its target from
        // -o (as -MQ), but only when compiling, so spell both out. (Not for
        // assembler, which writes none: its flags stay as the user gave
        // them, which clang warns about.)
        let completes = self.has_md && lang != Lang::Asm;
        if completes && !self.has_mf {
            deps.extend(["-MF".into(), dep_file_name(&output)]);
        }
        if completes && !self.has_target {
            deps.extend(["-MQ".into(), output.clone()]);
        }
        Ok(Compile {
            input,
            output,
            lang,
            base: self.base,
            deps,
            kind,
            color: self.color,
            // gcc records its switches in debug information by default,
            // clang only when asked.
            records_command_line: self.record_section
                || (self.debug && self.record_in_debug.unwrap_or(kind == Kind::Gcc)),
            urls_explicit: self.urls_explicit,
        })
    }
}

impl Compile {
    /// The flags that ask the compiler for colour, and for gcc's links to
    /// its documentation (OSC 8 hyperlinks), whatever its stderr is. gcc
    /// records no `-fdiagnostics-color` in an object, but does record
    /// `-fdiagnostics-urls`; clang records `-fcolor-diagnostics` where it
    /// records the command line.
    pub(crate) fn diagnostics_flags(&self) -> Vec<&'static str> {
        match self.kind {
            Kind::Gcc if self.records_command_line || self.urls_explicit => {
                vec!["-fdiagnostics-color=always"]
            }
            Kind::Gcc => vec!["-fdiagnostics-color=always", "-fdiagnostics-urls=always"],
            Kind::Clang if self.records_command_line => vec![],
            Kind::Clang => vec!["-fcolor-diagnostics"],
        }
    }

    /// What a compile asked for with [`Compile::diagnostics_flags`] and a
    /// local compile would not have printed, taken out of its stderr.
    pub(crate) fn local_diagnostics(&self, stderr: &[u8]) -> Vec<u8> {
        let flags = self.diagnostics_flags();
        let mut out = stderr.to_vec();
        if flags.contains(&"-fdiagnostics-urls=always") && !gcc_would_link() {
            out = strip_links(&out);
        }
        if !flags.is_empty() && !self.wants_color() {
            out = strip_color(&out);
        }
        out
    }

    /// Whether a local compile would print colour: asked for, or the
    /// compiler's default on a terminal (`TERM` set and not `dumb`, as gcc
    /// checks).
    pub(crate) fn wants_color(&self) -> bool {
        match self.color {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => {
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb")
            }
        }
    }

    /// The targets a local compile writes into the dependency file, as the
    /// compiler writes them (escaped): the `-MT` (as given) and `-MQ`
    /// (quoted) targets in order; with only a `-Wp,-MD,file` form, gcc's
    /// own default (the input's name with `.o`, no directory) or clang's
    /// (the object as given). A dependency file from a builder must name
    /// exactly these (see `swarmcc_protocol::depfile`).
    pub(crate) fn dep_targets(&self, kind: Kind) -> String {
        let mut targets: Vec<String> = Vec::new();
        let mut it = self.deps.iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.get(..3) {
                Some(f @ ("-MT" | "-MQ")) => (f, &a[3..]),
                _ => continue,
            };
            let value = if inline.is_empty() {
                it.next().cloned().unwrap_or_default()
            } else {
                inline.to_string()
            };
            targets.push(if flag == "-MQ" {
                swarmcc_protocol::depfile::quote(&value)
            } else {
                value
            });
        }
        if targets.is_empty() {
            let default = match kind {
                Kind::Gcc => {
                    let stem = Path::new(&self.input)
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .unwrap_or("a");
                    format!("{stem}.o")
                }
                Kind::Clang => self.output.clone(),
            };
            targets.push(swarmcc_protocol::depfile::quote(&default));
        }
        targets.join(" ")
    }
}

/// gcc's `%.d%*`: the output name with its suffix replaced by `.d`.
fn dep_file_name(output: &str) -> String {
    let p = Path::new(output);
    match (p.extension(), p.file_name().and_then(|f| f.to_str())) {
        (Some(_), Some(name)) if !name.starts_with('.') || name.matches('.').count() > 1 => {
            p.with_extension("d").to_string_lossy().into_owned()
        }
        _ => format!("{output}.d"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn ordinary_compile() {
        let c = parse(
            Kind::Gcc,
            &v("-c -O2 -g -Wall -Iinc -DX=1 -include cfg.h src/a.c -o build/a.o -MD"),
        )
        .unwrap();
        assert_eq!(c.input, "src/a.c");
        assert_eq!(c.output, "build/a.o");
        assert_eq!(c.lang, Lang::C);
        assert_eq!(c.base, v("-O2 -g -Wall -Iinc -DX=1 -include cfg.h src/a.c"));
        assert_eq!(c.deps, v("-MD -MF build/a.d -MQ build/a.o"));
        assert_eq!(c.dep_targets(Kind::Gcc), "build/a.o");
        let k = parse(
            Kind::Gcc,
            &v("-Wp,-MMD,dir/.a.o.d -Wp,-D_FORTIFY_SOURCE=2 -c a.c"),
        )
        .unwrap();
        assert_eq!(k.deps, v("-Wp,-MMD,dir/.a.o.d"));
        // gcc's own target for the preprocessor-level form; clang's.
        assert_eq!(k.dep_targets(Kind::Gcc), "a.o");
        assert_eq!(k.dep_targets(Kind::Clang), "a.o");
        assert_eq!(k.base, v("-Wp,-D_FORTIFY_SOURCE=2 a.c"));
    }

    #[test]
    fn defaults_and_languages() {
        let c = parse(Kind::Gcc, &v("-c x.cpp")).unwrap();
        assert_eq!((c.output.as_str(), c.lang), ("x.o", Lang::Cxx));
        let c = parse(Kind::Gcc, &v("-c -x c++ weird.inc -o w.o -g")).unwrap();
        assert_eq!(c.lang, Lang::Cxx);
        assert_eq!(c.base, v("-x c++ weird.inc -g"));
        assert_eq!(
            parse(Kind::Gcc, &v("-c start.S")).unwrap().lang,
            Lang::AsmCpp
        );
        // Plain assembler writes no dependency file: its flags stay as given.
        let c = parse(Kind::Gcc, &v("-c aes.s -MMD -o aes.o")).unwrap();
        assert_eq!((c.lang, c.deps.clone()), (Lang::Asm, v("-MMD")));
        let c = parse(Kind::Clang, &v("-c -x assembler gen.inc -o g.o")).unwrap();
        assert_eq!(c.lang, Lang::Asm);
        let c = parse(Kind::Gcc, &v("-c a.c -MMD -MF deps/a.d -MT tgt")).unwrap();
        assert_eq!(c.deps, v("-MMD -MF deps/a.d -MT tgt"));
        assert_eq!(c.dep_targets(Kind::Gcc), "tgt");
    }

    #[test]
    fn local_reasons() {
        use LocalReason::*;
        let cases = [
            ("a.o b.o -o prog", NotCompile),
            ("-E a.c", PreprocessOnly),
            ("-S a.c", PreprocessOnly),
            ("-M a.c", PreprocessOnly),
            ("-c a.c b.c", MultipleInputs),
            ("-c -", StdinInput),
            ("-c a.f90", UnknownLanguage),
            ("-c -x fortran a.f", UnknownLanguage),
            ("-c a.c -save-temps", UnsupportedFlag),
            ("-c a.c -gsplit-dwarf", UnsupportedFlag),
            ("-c a.c --coverage", UnsupportedFlag),
            ("-c a.c -fprofile-use=x", UnsupportedFlag),
            ("-c a.c -Wa,-adhln=a.lst", UnsupportedFlag),
            ("-c a.c -o", UnsupportedFlag),
        ];
        for (cmd, want) in cases {
            assert_eq!(parse(Kind::Gcc, &v(cmd)), Err(want), "{cmd}");
        }
        assert!(parse(Kind::Gcc, &v("-c a.c -Wa,--noexecstack")).is_ok());
    }

    #[test]
    fn response_files() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("r1"), "-c \"my file.c\" @r2").unwrap();
        std::fs::write(t.path().join("r2"), "-o 'out dir/a.o' -DX=a\\ b").unwrap();
        let e = expand_response_files(&v("-O2 @r1"), t.path()).unwrap();
        assert_eq!(
            e,
            vec!["-O2", "-c", "my file.c", "-o", "out dir/a.o", "-DX=a b"]
        );
        std::fs::write(t.path().join("loop"), "@loop").unwrap();
        assert!(expand_response_files(&v("@loop"), t.path()).is_err());
    }

    #[test]
    fn dep_names() {
        assert_eq!(dep_file_name("build/a.o"), "build/a.d");
        assert_eq!(dep_file_name("a.b.o"), "a.b.d");
        assert_eq!(dep_file_name("prog"), "prog.d");
    }

    #[test]
    fn colour_flags_stay_out_of_the_key_and_nothing_recorded_is_added() {
        let c = parse(Kind::Gcc, &v("-c a.c -fdiagnostics-color=never -O2")).unwrap();
        assert_eq!((c.color, c.base.clone()), (Color::Never, v("a.c -O2")));
        let c = parse(Kind::Clang, &v("-c a.c -fcolor-diagnostics")).unwrap();
        assert_eq!((c.color, c.base.clone()), (Color::Always, v("a.c")));
        let flags = |k: Kind, cmd: &str| parse(k, &v(cmd)).unwrap().diagnostics_flags();
        let (color, urls) = ("-fdiagnostics-color=always", "-fdiagnostics-urls=always");
        assert_eq!(flags(Kind::Gcc, "-c a.c -O2"), [color, urls]);
        // gcc records its switches in debug information, -fdiagnostics-urls among them.
        assert_eq!(flags(Kind::Gcc, "-c a.c -g -O2"), [color]);
        assert_eq!(flags(Kind::Gcc, "-c a.c -ggdb3"), [color]);
        assert_eq!(flags(Kind::Gcc, "-c a.c -g -g0"), [color, urls]);
        assert_eq!(
            flags(Kind::Gcc, "-c a.c -g -gno-record-gcc-switches"),
            [color, urls]
        );
        assert_eq!(flags(Kind::Gcc, "-c a.c -frecord-gcc-switches"), [color]);
        assert_eq!(flags(Kind::Gcc, "-c a.c -fdiagnostics-urls=never"), [color]);
        let plain = parse(Kind::Gcc, &v("-c a.c -fdiagnostics-plain-output")).unwrap();
        assert_eq!(plain.color, Color::Never);
        assert_eq!(plain.diagnostics_flags(), [color]);
        assert!(plain
            .base
            .contains(&"-fdiagnostics-plain-output".to_string()));
        // clang records -fcolor-diagnostics only where it records the command line.
        assert_eq!(flags(Kind::Clang, "-c a.c -g"), ["-fcolor-diagnostics"]);
        assert!(flags(Kind::Clang, "-c a.c -g -grecord-command-line").is_empty());
        assert!(flags(Kind::Clang, "-c a.c -frecord-command-line").is_empty());
    }

    #[test]
    fn colour_and_links_come_out_leaving_the_text() {
        let coloured = b"\x1b[01m\x1b[Ka.c:1:1:\x1b[m\x1b[K \x1b[01;35m\x1b[Kwarning: \x1b[m\x1b[Kx [\x1b[01;35m\x1b[K\x1b]8;;https://gcc.gnu.org/x\x07-Wall\x1b]8;;\x07\x1b[m\x1b[K]\n";
        assert_eq!(
            strip_color(&strip_links(coloured)),
            b"a.c:1:1: warning: x [-Wall]\n"
        );
        assert_eq!(
            strip_links(b"\x1b]8;;u\x1b\\t\x1b]8;;\x1b\\ and \x1b]8;;unended"),
            b"t and \x1b]8;;unended"
        );
        // Anything else stays as it is.
        let other = b"\x1b[2J plain \x1b[ \x1b";
        assert_eq!(strip_color(other), other);
    }
}
