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
    AsmCpp,
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
        _ => None,
    }
}

fn lang_of_x(x: &str) -> Option<Lang> {
    match x {
        "c" => Some(Lang::C),
        "c++" => Some(Lang::Cxx),
        "assembler-with-cpp" => Some(Lang::AsmCpp),
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
    let _ = kind;
    let mut seen = Seen::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut next = || it.next().cloned().ok_or(LocalReason::UnsupportedFlag);
        seen.arg(a, &mut next)?;
    }
    seen.finish()
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
        match a.as_str() {
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
    fn finish(mut self) -> Result<Compile, LocalReason> {
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
        // -o (as -MQ), but only when compiling, so spell both out.
        if self.has_md && !self.has_mf {
            deps.extend(["-MF".into(), dep_file_name(&output)]);
        }
        if self.has_md && !self.has_target {
            deps.extend(["-MQ".into(), output.clone()]);
        }
        Ok(Compile {
            input,
            output,
            lang,
            base: self.base,
            deps,
        })
    }
}

impl Compile {
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
}
