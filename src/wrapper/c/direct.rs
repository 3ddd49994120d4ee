//! Direct mode (as ccache's): a compile is looked up by its source and
//! command line; the answer is a manifest of the files an earlier identical
//! compile read, with its result. If every one of those files still has the
//! content it had, the result is the compile's, with no preprocessing at all.
//! A miss still brings the unit's last manifest (its "hint"), a good guess
//! of what it reads for [`super::speculate`].

use super::job::job_env;
use super::{deliver, DirectKeys, Unit};
use crate::args::Compile;
use crate::client::NodeClient;
use crate::fileinfo::FileInfo;
use std::path::Path;
use swarmcc_protocol::local::{Manifest, Request, Response, ToolchainInfo};
use swarmcc_protocol::{Hash32, Job};

/// What the direct-mode lookup came to.
pub(super) enum Lookup {
    /// The result of an earlier identical compile, delivered: its exit code.
    Hit(i32),
    /// No usable result; what the unit read last time, if known.
    Miss { hint: Option<Manifest> },
}

/// Direct mode's keys: everything but the headers (which the manifest
/// lists), and the same without the source's content (the unit's "hint").
pub(super) fn keys(tc: &ToolchainInfo, c: &Compile, cwd: &Path) -> Option<DirectKeys> {
    let source = std::fs::read(cwd.join(&c.input)).ok()?;
    let meta = (
        &tc.id,
        &tc.compiler,
        cwd.to_string_lossy(),
        job_env(&tc.compiler),
        &c.base,
        &c.deps,
        &c.output,
        &c.input,
    );
    let meta = swarmcc_protocol::frame::encode(&meta).ok()?;
    let mut hint = blake3::Hasher::new();
    hint.update(b"swarmcc-hint-key-v1\0");
    hint.update(&meta);
    let mut key = blake3::Hasher::new();
    key.update(b"swarmcc-direct-key-v1\0");
    key.update(&meta);
    key.update(Hash32::of(&source).0.as_slice());
    Some((Hash32::from(key.finalize()), Hash32::from(hint.finalize())))
}

/// Look the compile up (`early`: the node's answer, if the lookup went
/// along with the toolchain question) and deliver a hit.
pub(super) fn lookup(
    u: &Unit<'_>,
    node: &mut NodeClient,
    (key, hint): DirectKeys,
    early: Option<Response>,
    info: &mut FileInfo,
) -> Lookup {
    let answer = match early {
        Some(a) => Ok(a),
        None => node.call(&Request::DirectGet { key, hint }),
    };
    match answer {
        Ok(Response::DirectHit { manifest, result }) if manifest_still_holds(&manifest, info) => {
            let cwd = u.cwd();
            let dep_ok = match &manifest.dep_file {
                Some((path, bytes)) => crate::files::write_output(&cwd.join(path), bytes).is_ok(),
                None => true,
            };
            let want = super::job::job_output(&u.compile, cwd);
            match dep_ok.then(|| deliver(&u.compile, cwd, &want, &result)) {
                Some(Ok(code)) => Lookup::Hit(code),
                _ => Lookup::Miss { hint: None },
            }
        }
        Ok(Response::Hint(guess)) => Lookup::Miss { hint: Some(guess) },
        _ => Lookup::Miss { hint: None },
    }
}

/// Remember what a finished compile read, under its direct-mode keys, for
/// the next identical compile (unless [`manifest_for`] cannot vouch for it).
pub(super) fn remember(
    u: &Unit<'_>,
    node: &mut NodeClient,
    (key, hint): DirectKeys,
    job: &Job,
    clock: bool,
    result_key: Hash32,
) {
    if let Some(manifest) = manifest_for(&u.compile, u.cwd(), job, clock, result_key, u.started) {
        let _ = node.call(&Request::PutManifest {
            key,
            hint,
            manifest,
        });
    }
}

/// Whether every file a manifest lists still has the content it had.
fn manifest_still_holds(m: &Manifest, info: &mut FileInfo) -> bool {
    !m.files.is_empty()
        && m.files.iter().all(|f| {
            info.file(Path::new(&f.path))
                .is_some_and(|g| g.hash == f.hash)
        })
}

/// The manifest of a finished compile, unless direct mode cannot vouch for
/// it (as ccache: a file uses `__DATE__`/`__TIME__`/`__TIMESTAMP__`, told
/// by `clock`, or was modified after the compile started).
pub(super) fn manifest_for(
    c: &Compile,
    cwd: &Path,
    job: &Job,
    clock: bool,
    result_key: Hash32,
    started: std::time::SystemTime,
) -> Option<Manifest> {
    if clock {
        return None;
    }
    for f in &job.sources {
        let m = std::fs::metadata(&f.path).ok()?;
        if m.modified().ok()? >= started {
            return None;
        }
    }
    let dep_file = match dep_file_path(&c.deps) {
        Some(p) => Some((p.clone(), std::fs::read(cwd.join(&p)).ok()?)),
        None => None,
    };
    Some(Manifest {
        files: job.sources.clone(),
        result_key,
        dep_file,
    })
}

/// The dependency file the flags name (`-MF f`, `-MFf`, `-Wp,-MD,f`).
pub(super) fn dep_file_path(deps: &[String]) -> Option<String> {
    let mut it = deps.iter();
    while let Some(a) = it.next() {
        if a == "-MF" {
            return it.next().cloned();
        }
        if let Some(p) = a.strip_prefix("-MF") {
            return Some(p.to_string());
        }
        if let Some(p) = a
            .strip_prefix("-Wp,-MD,")
            .or_else(|| a.strip_prefix("-Wp,-MMD,"))
        {
            return Some(p.to_string());
        }
    }
    None
}
