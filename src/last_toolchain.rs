//! The toolchain the node last named for each compiler, kept between runs.
//!
//! A compile's direct-mode key holds its toolchain's id, and only the node
//! can vouch for that id (it checks the compiler's whole closure on every
//! request). Asking for the toolchain and then looking the key up costs two
//! round trips to the node per compile, and each one waits for the node's
//! threads to wake. With the id the node gave last time, the wrapper asks
//! both at once and keeps the lookup's answer only if the node names the
//! same toolchain again. A wrong, stale or damaged record costs the round
//! trip it would have saved and nothing more: the node's answer decides.

use std::path::Path;
use swarmcc_protocol::frame;
use swarmcc_protocol::local::{ToolchainInfo, ToolchainSpec};

/// At most this many compilers are remembered (one small file each).
const MAX_FILES: usize = 1024;

fn file_name(spec: &ToolchainSpec) -> Option<String> {
    let bytes = frame::encode(spec).ok()?;
    Some(blake3::hash(&bytes).to_hex().to_string())
}

/// The toolchain last named for `spec`, if one was kept in `dir`.
pub(crate) fn recall(dir: &Path, spec: &ToolchainSpec) -> Option<ToolchainInfo> {
    let body = std::fs::read(dir.join(file_name(spec)?)).ok()?;
    // The spec is kept too: a record is only ever taken for its own compiler.
    let (kept, info) = decode(&body)?;
    (kept == *spec).then_some(info)
}

/// A kept record: the compiler's spec and the toolchain named for it.
pub fn decode(body: &[u8]) -> Option<(ToolchainSpec, ToolchainInfo)> {
    frame::decode(body).ok()
}

/// Keep `info` as the toolchain the node named for `spec` (best effort).
pub(crate) fn remember(dir: &Path, spec: &ToolchainSpec, info: &ToolchainInfo) {
    let (Some(name), Ok(body)) = (file_name(spec), frame::encode(&(spec, info))) else {
        return;
    };
    crate::files::keep_file(dir, name, &body, MAX_FILES);
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmcc_protocol::hash::Hash32;
    use swarmcc_protocol::hash::ToolchainId;

    fn info(n: u8) -> ToolchainInfo {
        ToolchainInfo {
            id: ToolchainId(Hash32([n; 32])),
            compiler: "/usr/bin/gcc".into(),
        }
    }

    fn local(path: &str) -> ToolchainSpec {
        ToolchainSpec::Local {
            compiler: path.into(),
        }
    }

    #[test]
    fn a_kept_toolchain_is_recalled_for_its_own_compiler_only() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("last");
        let gcc = local("/usr/bin/gcc");
        assert_eq!(recall(&dir, &gcc), None, "nothing kept yet");
        remember(&dir, &gcc, &info(1));
        assert_eq!(recall(&dir, &gcc), Some(info(1)));
        assert_eq!(recall(&dir, &local("/usr/bin/clang")), None);
        let archive = ToolchainSpec::Archive {
            archive: "/usr/bin/gcc".into(),
            compiler: "/usr/bin/gcc".into(),
        };
        assert_eq!(recall(&dir, &archive), None);
        remember(&dir, &gcc, &info(2));
        assert_eq!(recall(&dir, &gcc), Some(info(2)), "the last one named");
    }

    #[test]
    fn a_damaged_or_foreign_record_is_not_taken() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let gcc = local("/usr/bin/gcc");
        remember(dir, &gcc, &info(1));
        let file = dir.join(file_name(&gcc).unwrap());
        let body = std::fs::read(&file).unwrap();
        std::fs::write(&file, &body[..body.len() - 3]).unwrap();
        assert_eq!(recall(dir, &gcc), None, "cut short");
        // Another compiler's record under this compiler's name.
        let clang = local("/usr/bin/clang");
        std::fs::write(&file, frame::encode(&(&clang, &info(3))).unwrap()).unwrap();
        assert_eq!(recall(dir, &gcc), None);
    }
}
