//! The first question of every compile: which toolchain the node holds for
//! this compiler (it packages a local compiler once). With the toolchain the
//! node named last time ([`crate::last_toolchain`]), the direct-mode cache
//! lookup goes along in the same round trip; its answer counts only if the
//! node names that toolchain again.

use super::{node_failed, Fallback, Wrapped};
use crate::client::NodeClient;
use anyhow::anyhow;
use swarmcc_node::config::CustomToolchain;
use swarmcc_protocol::local::{Request, Response, ToolchainInfo, ToolchainSpec};
use swarmcc_protocol::stats::LocalReason;
use swarmcc_protocol::Hash32;

/// A direct-mode lookup: the unit's key and its hint (the key without the
/// source's content).
pub(super) type DirectKeys = (Hash32, Hash32);

/// A unit's direct-mode keys with a given toolchain.
pub(super) type KeysWith<'a> = &'a dyn Fn(&ToolchainInfo) -> Option<DirectKeys>;

/// The node's toolchain for the compiler, and the answer to a direct-mode
/// lookup asked along with it (only if made with this very toolchain).
pub(super) struct Toolchain {
    pub(super) info: ToolchainInfo,
    pub(super) early: Option<(DirectKeys, Response)>,
    /// The toolchain is this machine's compiler (not a configured archive):
    /// the client holds the files its jobs read.
    pub(super) local: bool,
}

/// What to ask the node for: the configured archive, or the compiler itself.
fn spec(w: &Wrapped<'_>) -> ToolchainSpec {
    match w.custom {
        Some(CustomToolchain::PathOverride {
            archive,
            archive_compiler_executable,
            ..
        }) => ToolchainSpec::Archive {
            archive: archive.to_string_lossy().into_owned(),
            compiler: archive_compiler_executable.clone(),
        },
        _ => ToolchainSpec::Local {
            compiler: w.compiler.to_string_lossy().into_owned(),
        },
    }
}

/// Ask for the toolchain; with `direct_keys` (direct mode on), ask the
/// direct-mode lookup along with it when the toolchain can be guessed.
pub(super) fn ask(
    w: &Wrapped<'_>,
    node: &mut NodeClient,
    direct_keys: Option<KeysWith<'_>>,
) -> Result<Toolchain, Fallback> {
    let spec = spec(w);
    let last_dir = w.cfg.state.join("last-toolchain");
    let last = direct_keys.and_then(|_| crate::last_toolchain::recall(&last_dir, &spec));
    let early_keys = last.as_ref().zip(direct_keys).and_then(|(t, keys)| keys(t));
    let (answer, early) = match early_keys {
        Some((key, hint)) => node
            .call_two(
                &Request::Toolchain(spec.clone()),
                &Request::DirectGet { key, hint },
            )
            .map(|(t, d)| (t, Some(d))),
        None => node
            .call(&Request::Toolchain(spec.clone()))
            .map(|t| (t, None)),
    }
    .map_err(node_failed)?;
    let info = match answer {
        Response::Toolchain(info) => info,
        Response::Error(e) => {
            return Err(Fallback::new(
                LocalReason::SwarmFailure,
                Some(anyhow!(e)),
                false,
            ))
        }
        other => return Err(node_failed(anyhow!("unexpected {other:?}"))),
    };
    let early = if last.as_ref() == Some(&info) {
        early_keys.zip(early)
    } else {
        if direct_keys.is_some() {
            crate::last_toolchain::remember(&last_dir, &spec, &info);
        }
        None
    };
    Ok(Toolchain {
        info,
        early,
        local: matches!(spec, ToolchainSpec::Local { .. }),
    })
}
