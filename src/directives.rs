//! What a C or C++ file may include, read without a preprocessor: every
//! `#include`, `#include_next`, `#import` and `__has_include` in any branch
//! of any conditional, the macros it defines, and the blocks a computed
//! include can be skipped in. [`crate::fileinfo`] remembers the result per
//! file content; [`crate::scan`] resolves the names.

use serde::{Deserialize, Serialize};

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
pub(crate) fn directives(text: &[u8]) -> Result<Directives, Unresolvable> {
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
pub(crate) fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A C identifier at the start of `s`.
pub(crate) fn identifier(s: &[u8]) -> Option<&str> {
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
}
