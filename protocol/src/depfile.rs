//! Dependency files (`-MD` output) that a builder wrote: checked before they
//! reach a developer's disk, where the next `make` reads them as part of
//! its makefile.
//!
//! A dependency file is make syntax, so a hostile builder could send
//! `$(shell ...)`, a recipe line, a variable assignment (`a.o: CC = ...`, a
//! target-specific one), an `include`, or a special target, and run code on
//! the developer's machine at the next build. What gcc and clang write is a
//! tiny subset: one rule `targets: prerequisites` (with `\`-newline
//! continuations and `\ `, `\#` escapes) and, with `-MP`, one empty rule
//! per header. [`check`] accepts exactly that subset: the targets must be
//! the ones the compile's flags name (when the caller knows them), every
//! prerequisite one of the files the job carried (and, as written, the very
//! same file on the client's disk, which the caller checks: `junk/../a.h`
//! normalizes to `a.h`, but make would look for `junk`), every phony rule
//! one of those prerequisites, and nothing else may appear: no `$` at all
//! (a `$$` is an expansion under `.SECONDEXPANSION`), no `=`, `;`, `%`,
//! `|`, backquote or comment, no tab or other control byte (make splits
//! words at vertical tabs and form feeds too), no line that starts a
//! recipe, and a line continued only by a single backslash. A file with a
//! `$` in its name is refused as well: the compile is then redone the
//! checked way, which writes the file locally.
//!
//! Bounded: at most [`MAX_BYTES`] of text and [`MAX_WORDS`] words, checked in
//! time linear in them.

use std::fmt;

/// The largest dependency file read (gcc's for a large C++ unit is a few
/// hundred kilobytes).
pub const MAX_BYTES: usize = 8 << 20;
/// The most prerequisites (and phony rules) of one file.
pub(crate) const MAX_WORDS: usize = 100_000;

/// Why a dependency file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepError {
    #[error("not text (UTF-8 without NUL or carriage return)")]
    NotText,
    #[error("more than one rule with prerequisites")]
    SecondRule,
    #[error("a line that is no rule: {0:?}")]
    NotARule(String),
    #[error("a recipe line")]
    Recipe,
    #[error("{0:?} is not allowed in a dependency file")]
    Forbidden(char),
    #[error("a variable or function reference")]
    Reference,
    #[error("a comment")]
    Comment,
    #[error("the targets are {found:?}, not {expected:?}")]
    WrongTargets {
        expected: Vec<String>,
        found: Vec<String>,
    },
    #[error("the special target or directive {0:?}")]
    Special(String),
    #[error("{0:?} is not a file the job carried")]
    NotCarried(String),
    #[error("a phony rule for {0:?}, which is no prerequisite")]
    StrayPhony(String),
    #[error("no rule")]
    Empty,
    #[error("larger than {MAX_BYTES} bytes or {MAX_WORDS} words")]
    TooLarge,
}

/// A dependency file's rules, unescaped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub targets: Vec<String>,
    pub prerequisites: Vec<String>,
    /// `-MP`'s empty rules, one per header.
    pub phony: Vec<String>,
}

/// Make's words of one logical line: unescaped, and whether each ended
/// with the rule's colon.
struct Word {
    text: String,
    colon: bool,
}

impl fmt::Debug for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}{}", self.text, if self.colon { ":" } else { "" })
    }
}

/// Split a logical line into words as make reads a rule line, refusing
/// everything outside the subset compilers write.
fn words(line: &str) -> Result<Vec<Word>, DepError> {
    let mut out: Vec<Word> = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let end = |cur: &mut String, colon: bool, out: &mut Vec<Word>| {
        if !cur.is_empty() || colon {
            out.push(Word {
                text: std::mem::take(cur),
                colon,
            });
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                // A run of backslashes: before a blank, make reads 2N+1 of
                // them as N and an escaped blank, 2N as N and the end of
                // the word; before `#`, one escapes it; elsewhere they are
                // themselves.
                let mut n = 1;
                while chars.peek() == Some(&'\\') {
                    chars.next();
                    n += 1;
                }
                match chars.peek() {
                    Some(' ') => {
                        cur.extend(std::iter::repeat_n('\\', n / 2));
                        if n % 2 == 1 {
                            cur.extend(chars.next());
                        }
                    }
                    Some('#') if n == 1 => cur.extend(chars.next()),
                    Some('#') => return Err(DepError::Forbidden('#')),
                    _ => cur.extend(std::iter::repeat_n('\\', n)),
                }
            }
            '$' => return Err(DepError::Reference),
            '#' => return Err(DepError::Comment),
            ' ' => end(&mut cur, false, &mut out),
            ':' => {
                if matches!(chars.peek(), Some(':' | '=')) {
                    return Err(DepError::Forbidden(':'));
                }
                end(&mut cur, true, &mut out);
            }
            '=' | ';' | '%' | '|' | '`' => return Err(DepError::Forbidden(c)),
            c if c.is_control() => return Err(DepError::Forbidden(c)),
            c => cur.push(c),
        }
    }
    end(&mut cur, false, &mut out);
    Ok(out)
}

/// The directives and special targets make gives a meaning of their own.
fn special(word: &str) -> bool {
    const DIRECTIVES: &[&str] = &[
        "include", "-include", "sinclude", "export", "unexport", "override", "define", "endef",
        "undefine", "vpath", "load", "-load", "private", "ifeq", "ifneq", "ifdef", "ifndef",
        "else", "endif",
    ];
    let dot_upper = word
        .strip_prefix('.')
        .and_then(|r| r.chars().next())
        .is_some_and(|c| c.is_ascii_uppercase());
    dot_upper || DIRECTIVES.contains(&word)
}

/// Parse a dependency file strictly (see the module's doc).
pub fn parse(text: &[u8]) -> Result<Rules, DepError> {
    if text.len() > MAX_BYTES {
        return Err(DepError::TooLarge);
    }
    let text = std::str::from_utf8(text).map_err(|_| DepError::NotText)?;
    if text.contains(['\0', '\r']) {
        return Err(DepError::NotText);
    }
    // A line continues after one backslash; make reads a longer run before
    // a newline differently (halved, and by its parity).
    if text.contains("\\\\\n") {
        return Err(DepError::Forbidden('\\'));
    }
    let joined = text.replace("\\\n", " ");
    let mut rules = Rules::default();
    let mut seen_main = false;
    for line in joined.split('\n') {
        if line.starts_with('\t') {
            return Err(DepError::Recipe);
        }
        let words = words(line)?;
        if words.is_empty() {
            continue;
        }
        let Some(sep) = words.iter().position(|w| w.colon) else {
            return Err(DepError::NotARule(line.chars().take(80).collect()));
        };
        if words[sep + 1..].iter().any(|w| w.colon) {
            return Err(DepError::Forbidden(':'));
        }
        let targets: Vec<String> = words[..=sep]
            .iter()
            .map(|w| w.text.clone())
            .filter(|t| !t.is_empty())
            .collect();
        if let Some(s) = targets.iter().find(|t| special(t)) {
            return Err(DepError::Special(s.clone()));
        }
        if targets.is_empty() {
            return Err(DepError::NotARule(line.chars().take(80).collect()));
        }
        let prereqs: Vec<String> = words[sep + 1..].iter().map(|w| w.text.clone()).collect();
        if rules.prerequisites.len() + rules.phony.len() + prereqs.len() > MAX_WORDS {
            return Err(DepError::TooLarge);
        }
        if !seen_main {
            seen_main = true;
            rules.targets = targets;
            rules.prerequisites = prereqs;
        } else if prereqs.is_empty() && targets.len() == 1 {
            rules.phony.extend(targets);
        } else {
            return Err(DepError::SecondRule);
        }
    }
    if !seen_main {
        return Err(DepError::Empty);
    }
    Ok(rules)
}

/// Check a dependency file a builder wrote: its targets are `expected` (in
/// the form the compiler writes them, escaped; `None` when the caller
/// cannot know them, which still refuses special targets), and every
/// prerequisite is a file for which `carried` says yes.
pub fn check(
    text: &[u8],
    expected: Option<&str>,
    carried: impl Fn(&str) -> bool,
) -> Result<Rules, DepError> {
    let rules = parse(text)?;
    if let Some(expected) = expected {
        let want: Vec<String> = words(expected)?
            .into_iter()
            .map(|w| w.text)
            .filter(|t| !t.is_empty())
            .collect();
        if want != rules.targets {
            return Err(DepError::WrongTargets {
                expected: want,
                found: rules.targets,
            });
        }
    }
    if let Some(p) = rules.prerequisites.iter().find(|p| !carried(p)) {
        return Err(DepError::NotCarried(p.clone()));
    }
    let prerequisites: std::collections::HashSet<&str> =
        rules.prerequisites.iter().map(String::as_str).collect();
    if let Some(p) = rules
        .phony
        .iter()
        .find(|p| !prerequisites.contains(p.as_str()))
    {
        return Err(DepError::StrayPhony(p.clone()));
    }
    Ok(rules)
}

/// A name as gcc writes a `-MQ` target (and every prerequisite): blanks
/// escaped (the backslashes before them doubled), `$` doubled, `#` escaped.
pub fn quote(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut slashes = 0usize;
    for c in name.chars() {
        match c {
            '\\' => {
                slashes += 1;
                out.push(c);
                continue;
            }
            ' ' | '\t' => {
                out.extend(std::iter::repeat_n('\\', slashes + 1));
            }
            '$' => out.push('$'),
            '#' => out.push('\\'),
            _ => {}
        }
        slashes = 0;
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GCC: &[u8] = b"obj/a.o: src/a.c /usr/include/stdio.h \\\n /usr/include/x\\ y.h \\\n  inc/../inc/h.h\n\n/usr/include/stdio.h:\n\n/usr/include/x\\ y.h:\n\ninc/../inc/h.h:\n";

    fn carried(p: &str) -> bool {
        [
            "src/a.c",
            "/usr/include/stdio.h",
            "/usr/include/x y.h",
            "inc/../inc/h.h",
        ]
        .contains(&p)
    }

    #[test]
    fn what_gcc_writes_is_read_and_accepted() {
        let r = check(GCC, Some("obj/a.o"), carried).unwrap();
        assert_eq!(r.targets, ["obj/a.o"]);
        assert_eq!(
            r.prerequisites,
            [
                "src/a.c",
                "/usr/include/stdio.h",
                "/usr/include/x y.h",
                "inc/../inc/h.h"
            ]
        );
        assert_eq!(r.phony.len(), 3);
        // -MT and -MQ targets together, as gcc writes them.
        let two = b"a b x\\ y: src/a.c\n";
        let r = check(two, Some(&format!("a b {}", quote("x y"))), carried).unwrap();
        assert_eq!(r.targets, ["a", "b", "x y"]);
        // Targets wrapped onto continuation lines.
        let wrapped = b"first.o \\\n second.o: src/a.c\n";
        assert!(check(wrapped, Some("first.o second.o"), carried).is_ok());
    }

    #[test]
    fn what_a_hostile_builder_could_send_is_refused() {
        let cases: Vec<(&[u8], DepError)> = vec![
            (b"obj/a.o: src/a.c\n\techo pwned\n", DepError::Recipe),
            (b"obj/a.o: $(shell touch /tmp/pwned)\n", DepError::Reference),
            (b"obj/a.o: src/a.c ${HOME}\n", DepError::Reference),
            // Expanded again under .SECONDEXPANSION.
            (
                b"obj/a.o: $$(shell\x0btouch$${IFS}/tmp/p)/../../src/a.c\n",
                DepError::Reference,
            ),
            // make splits words at vertical tabs and form feeds too.
            (
                b"obj/a.o: src/a.c\n-include\x0bsrc/../src/a.c:\n",
                DepError::Forbidden('\x0b'),
            ),
            (
                b"obj/a.o: src/a.c\x0csrc/a.c\n",
                DepError::Forbidden('\x0c'),
            ),
            (b"obj/a.o: src/a.c\tsrc/a.c\n", DepError::Forbidden('\t')),
            // Two backslashes before a newline: make does not continue there.
            (
                b"obj/a.o: src/a.c x\\\\\n-include src/a.c\n",
                DepError::Forbidden('\\'),
            ),
            (b"obj/a.o: CC = /tmp/evil\n", DepError::Forbidden('=')),
            (b"obj/a.o: CC := /tmp/evil\n", DepError::Forbidden(':')),
            (
                b"CC=/tmp/evil\nobj/a.o: src/a.c\n",
                DepError::Forbidden('='),
            ),
            (b"obj/a.o: src/a.c ; rm -rf ~\n", DepError::Forbidden(';')),
            (
                b"obj/a.o: src/a.c\ninclude /tmp/evil.mk\n",
                DepError::NotARule("include /tmp/evil.mk".into()),
            ),
            (
                b"include /tmp/evil.mk: x\n",
                DepError::Special("include".into()),
            ),
            (
                b"obj/a.o: src/a.c\n-include src/a.c:\n",
                DepError::Special("-include".into()),
            ),
            (
                b"obj/a.o: src/a.c\ndefine src/a.c:\n",
                DepError::Special("define".into()),
            ),
            (
                b"obj/a.o: src/a.c\nendif:\n",
                DepError::Special("endif".into()),
            ),
            (
                b".SECONDEXPANSION: src/a.c\n",
                DepError::Special(".SECONDEXPANSION".into()),
            ),
            (
                b"obj/a.o: src/a.c\n.PHONY: all\n",
                DepError::Special(".PHONY".into()),
            ),
            (b"obj/a.o:: src/a.c\n", DepError::Forbidden(':')),
            (b"%.o: src/a.c\n", DepError::Forbidden('%')),
            (b"obj/a.o: src/a.c | order\n", DepError::Forbidden('|')),
            (b"obj/a.o: src/a.c # note\n", DepError::Comment),
            (b"obj/a.o: src/a.c\nall: src/a.c\n", DepError::SecondRule),
            (
                b"obj/a.o: src/a.c /etc/passwd\n",
                DepError::NotCarried("/etc/passwd".into()),
            ),
            (
                b"obj/a.o: src/a.c\n\nsrc/other.h:\n",
                DepError::StrayPhony("src/other.h".into()),
            ),
            (
                b"all: src/a.c\n",
                DepError::WrongTargets {
                    expected: vec!["obj/a.o".into()],
                    found: vec!["all".into()],
                },
            ),
            (
                b"obj/a.o all: src/a.c\n",
                DepError::WrongTargets {
                    expected: vec!["obj/a.o".into()],
                    found: vec!["obj/a.o".into(), "all".into()],
                },
            ),
            (b"obj/a.o: src/a.c\r\n", DepError::NotText),
            (b"obj/a.o: src/a\0.c\n", DepError::NotText),
            (b"\xff: x\n", DepError::NotText),
            (b"", DepError::Empty),
            (b"just words\n", DepError::NotARule("just words".into())),
            (b"obj/a.o: `touch x`\n", DepError::Forbidden('`')),
        ];
        for (text, why) in cases {
            assert_eq!(
                check(text, Some("obj/a.o"), carried).map(|_| ()),
                Err(why),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        // Without known targets, special ones are refused all the same.
        assert!(check(b".DEFAULT: src/a.c\n", None, carried).is_err());
        assert!(check(b"obj/a.o: src/a.c\n", None, carried).is_ok());
    }

    #[test]
    fn a_huge_file_is_refused_and_a_large_one_read() {
        let mut big = b"obj/a.o:".to_vec();
        for _ in 0..=MAX_WORDS {
            big.extend_from_slice(b" src/a.c");
        }
        big.push(b'\n');
        assert_eq!(
            check(&big, None, carried).map(|_| ()),
            Err(DepError::TooLarge)
        );
        let mut phony = b"obj/a.o: src/a.c\n".to_vec();
        for _ in 0..(MAX_WORDS - 1) {
            phony.extend_from_slice(b"src/a.c:\n");
        }
        // (A quadratic check of the phony rules would take some 10^10
        // comparisons here.)
        assert!(check(&phony, None, carried).is_ok());
        assert_eq!(
            check(&vec![b' '; MAX_BYTES + 1], None, carried).map(|_| ()),
            Err(DepError::TooLarge)
        );
    }

    #[test]
    fn quoting_matches_gcc() {
        assert_eq!(quote("a b"), "a\\ b");
        assert_eq!(quote("a\\ b"), "a\\\\\\ b");
        assert_eq!(quote("x$y#z"), "x$$y\\#z");
        assert_eq!(quote("plain/path.o"), "plain/path.o");
        for name in ["a b", "h#1.h", "d\\ir/f.o", "t\\"] {
            let w = words(&quote(name)).unwrap();
            assert_eq!(w.len(), 1, "{name}");
            assert_eq!(w[0].text, name, "{name}");
        }
        // A `$` in a name is not taken (see the module's doc).
        assert!(words(&quote("x$y")).is_err());
    }
}
