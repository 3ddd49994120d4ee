//! Dependency files (`-MD` output) that a builder wrote: checked before they
//! reach a developer's disk, where the next `make` reads them as part of
//! its makefile.
//!
//! A dependency file is make syntax, so a hostile builder could send
//! `$(shell ...)`, a recipe line, a variable assignment (`a.o: CC = ...`, a
//! target-specific one), an `include`, or a special target, and run code on
//! the developer's machine at the next build. What gcc and clang write is a
//! tiny subset: one rule `targets: prerequisites` (with `\`-newline
//! continuations, `\ `, `\#` and `$$` escapes) and, with `-MP`, one empty
//! rule per header. [`check`] accepts exactly that subset: the targets must
//! be the ones the compile's flags name (when the caller knows them), every
//! prerequisite one of the files the job carried, every phony rule one of
//! those prerequisites, and nothing else may appear (no `$` but `$$`, no
//! `=`, `;`, `%`, `|` or comment, no line that starts with a tab).

use std::fmt;

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
                    Some(' ' | '\t') => {
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
            '$' => {
                if chars.next() != Some('$') {
                    return Err(DepError::Reference);
                }
                cur.push('$');
            }
            '#' => return Err(DepError::Comment),
            ' ' | '\t' => end(&mut cur, false, &mut out),
            ':' => {
                if matches!(chars.peek(), Some(':' | '=')) {
                    return Err(DepError::Forbidden(':'));
                }
                end(&mut cur, true, &mut out);
            }
            '=' | ';' | '%' | '|' | '`' => return Err(DepError::Forbidden(c)),
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
    let text = std::str::from_utf8(text).map_err(|_| DepError::NotText)?;
    if text.contains(['\0', '\r']) {
        return Err(DepError::NotText);
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
    if let Some(p) = rules
        .phony
        .iter()
        .find(|p| !rules.prerequisites.contains(p))
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

    const GCC: &[u8] = b"obj/a.o: src/a.c /usr/include/stdio.h \\\n /usr/include/x\\ y.h \\\n  inc/$$h.h\n\n/usr/include/stdio.h:\n\n/usr/include/x\\ y.h:\n\ninc/$$h.h:\n";

    fn carried(p: &str) -> bool {
        [
            "src/a.c",
            "/usr/include/stdio.h",
            "/usr/include/x y.h",
            "inc/$h.h",
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
                "inc/$h.h"
            ]
        );
        assert_eq!(r.phony.len(), 3);
        // -MT and -MQ targets together, as gcc writes them.
        let two = b"a b$c x\\ y$$z: src/a.c\n";
        let r = check(two, Some("a b$c x\\ y$$z"), carried);
        assert_eq!(r, Err(DepError::Reference), "an -MT target with a lone $");
        let two = b"a b x\\ y$$z: src/a.c\n";
        let r = check(two, Some(&format!("a b {}", quote("x y$z"))), carried).unwrap();
        assert_eq!(r.targets, ["a", "b", "x y$z"]);
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
    fn quoting_matches_gcc() {
        assert_eq!(quote("a b"), "a\\ b");
        assert_eq!(quote("a\\ b"), "a\\\\\\ b");
        assert_eq!(quote("x$y#z"), "x$$y\\#z");
        assert_eq!(quote("plain/path.o"), "plain/path.o");
        for name in ["a b", "x$y", "h#1.h", "d\\ir/f.o", "t\\"] {
            let w = words(&quote(name)).unwrap();
            assert_eq!(w.len(), 1, "{name}");
            assert_eq!(w[0].text, name, "{name}");
        }
    }
}
