//! Finding the source files a compile's diagnostics may quote.
//!
//! The preprocessed text names every file it came from in line markers
//! (`# 12 "src/a.c" 2`). The compiler reads exactly these files to print
//! the source line under a caret, so the job carries them and the builder
//! shows them at the same paths.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The distinct file names in the line markers of preprocessed text, in
/// first-seen order, skipping `<built-in>`-style pseudo files.
pub(crate) fn line_marker_files(pp: &[u8]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for line in pp.split(|&b| b == b'\n') {
        let Some(rest) = line
            .strip_prefix(b"# ")
            .or_else(|| line.strip_prefix(b"#line "))
        else {
            continue;
        };
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            continue;
        }
        let rest = &rest[digits..];
        let Some(rest) = rest.strip_prefix(b" \"") else {
            continue;
        };
        let Some(name) = unescape_until_quote(rest) else {
            continue;
        };
        if name.starts_with('<') || name.is_empty() {
            continue;
        }
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    out
}

fn unescape_until_quote(s: &[u8]) -> Option<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => return String::from_utf8(out).ok(),
            b'\\' if i + 1 < s.len() => {
                // gcc escapes `\` and `"`; octal escapes for other bytes.
                let n = s[i + 1];
                if (b'0'..=b'7').contains(&n) {
                    let oct: Vec<u8> = s[i + 1..]
                        .iter()
                        .take(3)
                        .take_while(|c| (b'0'..=b'7').contains(c))
                        .copied()
                        .collect();
                    let v = oct
                        .iter()
                        .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                    out.push(v as u8);
                    i += 1 + oct.len();
                    continue;
                }
                out.push(n);
                i += 2;
                continue;
            }
            c => out.push(c),
        }
        i += 1;
    }
    None
}

/// `cwd.join(p)`, lexically normalized (the way the builder will see it).
pub fn absolute(cwd: &Path, p: &str) -> PathBuf {
    // `join` keeps an absolute `p` as it is.
    swarmcc_node::store::package::normalize(&cwd.join(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        let pp = b"# 0 \"../src/a.c\"\n# 0 \"<built-in>\"\n# 1 \"/usr/include/stdio.h\" 1 3 4\nint x;\n# 5 \"../src/a.c\" 2\n# 1 \"we\\\"ird\\\\name.h\" 1\n#pragma once\n";
        assert_eq!(
            line_marker_files(pp),
            vec!["../src/a.c", "/usr/include/stdio.h", "we\"ird\\name.h"]
        );
    }

    #[test]
    fn absolute_paths() {
        assert_eq!(
            absolute(Path::new("/p/build"), "../src/./a.c"),
            PathBuf::from("/p/src/a.c")
        );
        assert_eq!(
            absolute(Path::new("/p"), "/usr/include/x.h"),
            PathBuf::from("/usr/include/x.h")
        );
    }
}
