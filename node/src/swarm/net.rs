//! The node's place in its office: libp2p (TCP + noise + yamux), discovery by
//! mDNS, Kademlia and configured bootstrap peers, token-checked membership,
//! and liveness.
//!
//! Every connection starts with a `Hello` each way carrying the sender's
//! office token; a peer becomes a member only when its token verifies for
//! this office and (for a builder token) names the peer id that noise
//! authenticated. Anything else is answered `Rejected`, logged, counted and
//! disconnected. libp2p notices neither dead TCP peers nor healed
//! partitions, so liveness is ours: members report every
//! `report_interval_ms`, one not heard from for `liveness_timeout_ms` is
//! lost, and wanted peers are redialled with backoff.
//!
//! What those messages do (membership, election, allocation) is decided in
//! [`crate::swarm::office`], without I/O; this module carries them over libp2p.

use crate::config::{NetworkConfig, OfficeConfig};
use crate::swarm::coordinator::Taken;
use crate::swarm::dialing::{Dialing, Wanted};
use crate::swarm::event_loop::{build_swarm, lock, Cmd, EventLoop};
use crate::swarm::office::{Now, Office, OfficeInit, SHARED_TOKEN_PREFIX};
use crate::util::{now_secs, random_u64};
use anyhow::{Context, Result};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarmcc_protocol::swarm::{distinct_name, AllocRequest, CtlRequest, CtlResponse, OfficeView};
use swarmcc_protocol::token::{OfficePublicKey, RevocationList, Token};
use swarmcc_protocol::transfer::Grant;
use swarmcc_protocol::{Hash32, ToolchainId};
use tokio::sync::{mpsc, oneshot, watch};

/// What this node brings to its office.
pub struct NetParams {
    pub keypair: libp2p_identity::Keypair,
    pub office: OfficeConfig,
    pub network: NetworkConfig,
    pub name: String,
    pub cores: u32,
    pub builds: bool,
    /// Whose ids go into reports.
    pub toolchains: Arc<crate::store::ToolchainStore>,
    /// sccache's shared client secret (`[dist.auth] type = "token"`):
    /// presented when the node has no office token, accepted from clients.
    pub shared_token: Option<String>,
}

/// What a member is, as far as other parts of the node need to know.
#[derive(Clone, Debug)]
pub struct MemberAuth {
    pub name: String,
    /// It holds a builder token and a working sandbox.
    pub builds: bool,
    /// Its token lets it coordinate.
    pub eligible: bool,
}

/// The coordinator's answer to a request for a builder.
#[derive(Debug)]
pub enum Alloc {
    Granted {
        grant: Grant,
        holders: Vec<String>,
    },
    Full,
    /// No coordinator is known (or reachable) right now.
    NoCoordinator(String),
}

/// The running network part of a node: other parts ask it for builders,
/// check members, and open streams to peers.
pub struct Net {
    state: Arc<Mutex<Office>>,
    cmd: mpsc::Sender<Cmd>,
    control: libp2p_stream::Control,
    me: PeerId,
    view: watch::Receiver<OfficeView>,
}

/// How long a client waits for the coordinator's answer.
const ALLOC_TIMEOUT: Duration = Duration::from_secs(3);

impl Net {
    fn lock(&self) -> std::sync::MutexGuard<'_, Office> {
        lock(&self.state)
    }

    /// This node's peer id.
    pub fn me(&self) -> PeerId {
        self.me
    }

    /// Accepts and opens job and toolchain streams.
    pub fn control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// A new stream of `protocol` to `peer`; the error names the protocol.
    pub(crate) async fn open_stream(
        &self,
        peer: libp2p::PeerId,
        protocol: &'static str,
    ) -> anyhow::Result<libp2p::Stream> {
        self.control
            .clone()
            .open_stream(peer, libp2p::StreamProtocol::new(protocol))
            .await
            .map_err(|e| anyhow::anyhow!("opening a stream of {protocol}: {e}"))
    }

    /// The office as this node sees it (for `status`), as of the last
    /// report or liveness check.
    pub fn view(&self) -> OfficeView {
        self.view.borrow().clone()
    }

    /// A builder for a job carrying `bytes` of sources: from this node
    /// itself when it coordinates, otherwise from the coordinator it knows.
    pub async fn allocate(
        &self,
        job: Hash32,
        toolchain: ToolchainId,
        exclude: Vec<String>,
        bytes: u64,
    ) -> Alloc {
        let req = AllocRequest {
            job,
            toolchain,
            exclude,
            bytes,
        };
        let leader = {
            let mut st = self.lock();
            if st.is_coordinator() {
                let me = self.me;
                return alloc_of(st.grant(&me, &req, Now::real()));
            }
            st.leader()
        };
        let Some(leader) = leader else {
            return Alloc::NoCoordinator("no coordinator elected yet".into());
        };
        match self.ctl(leader, CtlRequest::Alloc(req)).await {
            Ok(resp) => alloc_of(resp),
            Err(e) => Alloc::NoCoordinator(format!("coordinator {leader}: {e}")),
        }
    }

    /// Tell the grant's coordinator that its job ended.
    pub fn release(&self, grant: &Grant, failed: bool) {
        let Ok(key) = libp2p_identity::PublicKey::try_decode_protobuf(&grant.body.coordinator_key)
        else {
            return;
        };
        let signer = key.to_peer_id();
        if signer == self.me {
            let me = self.me;
            self.lock().release(&me, grant.body.id, failed, Now::real());
        } else {
            let req = CtlRequest::Release {
                grant: grant.body.id,
                failed,
            };
            let _ = self.cmd.try_send(Cmd::Ctl {
                peer: signer,
                req,
                reply: None,
            });
        }
    }

    async fn ctl(&self, peer: PeerId, req: CtlRequest) -> Result<CtlResponse, String> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Ctl {
                peer,
                req,
                reply: Some(tx),
            })
            .await
            .map_err(|_| "network task gone".to_string())?;
        match tokio::time::timeout(ALLOC_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("no answer".into()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// The member `peer`, if it is one now.
    pub fn member(&self, peer: &PeerId) -> Option<MemberAuth> {
        let st = self.lock();
        st.members.get(peer).map(|m| MemberAuth {
            name: m.name.clone(),
            builds: m.builds,
            eligible: m.eligible,
        })
    }

    /// Whether `peer` (a peer id in text form) may sign job grants.
    pub(crate) fn may_coordinate(&self, peer: &str) -> bool {
        let st = self.lock();
        if peer == self.me.to_string() {
            return st.eligible;
        }
        peer.parse::<PeerId>()
            .ok()
            .and_then(|p| st.members.get(&p).map(|m| m.eligible))
            .unwrap_or(false)
    }

    /// A member's display name (its peer id if unknown), told apart from
    /// other members of the same name ([`distinct_name`]).
    pub(crate) fn name_of(&self, peer: &str) -> String {
        let st = self.lock();
        let name = if peer == self.me.to_string() {
            st.hello.name.clone()
        } else {
            match peer
                .parse::<PeerId>()
                .ok()
                .and_then(|p| st.members.get(&p).map(|m| m.name.clone()))
            {
                Some(n) => n,
                None => return peer.to_string(),
            }
        };
        let namesakes = st.members.values().filter(|m| m.name == name).count()
            + usize::from(st.hello.name == name);
        distinct_name(&name, peer, namesakes > 1)
    }

    /// Whether `token` is a valid client token of this office now (signature,
    /// office, expiry and the current revocation list).
    pub(crate) fn client_token_ok(&self, token: &str) -> bool {
        let st = self.lock();
        token.parse::<Token>().is_ok_and(|t| {
            t.verify_client(&st.key, &st.office, now_secs(), st.revoked.as_ref())
                .is_ok()
        })
    }

    /// Whether a builder of the office reports holding `toolchain`.
    pub(crate) fn held_in_office(&self, toolchain: &ToolchainId) -> bool {
        !self.lock().alloc.holders(toolchain, "", 1).is_empty()
    }
}

fn alloc_of(r: CtlResponse) -> Alloc {
    match r {
        CtlResponse::Granted { grant, holders } => Alloc::Granted { grant, holders },
        CtlResponse::Full => Alloc::Full,
        CtlResponse::NotCoordinator(l) => {
            Alloc::NoCoordinator(format!("asked a node that is not the coordinator ({l:?})"))
        }
        CtlResponse::Rejected(why) => Alloc::NoCoordinator(format!("refused: {why}")),
        other => Alloc::NoCoordinator(format!("unexpected answer {other:?}")),
    }
}

/// Start the network task. `taken` counts the jobs this node runs for
/// others (what its reports say).
pub fn spawn(p: NetParams, taken: Arc<Taken>) -> Result<Arc<Net>> {
    let key: OfficePublicKey = p.office.public_key.parse().context("[office] public_key")?;
    // A bad list in the config is an error at start, not a silent no-op.
    if let Some(text) = &p.office.revocations {
        let list: RevocationList = text.parse().context("[office] revocations")?;
        list.verify(&key, &p.office.name)
            .context("[office] revocations")?;
    }
    let token = match (p.office.token()?, &p.shared_token) {
        (Some(t), _) => t,
        (None, Some(secret)) => format!("{SHARED_TOKEN_PREFIX}{secret}"),
        (None, None) => anyhow::bail!(
            "[office] needs a builder_token or client_token (or [dist.auth] type = \"token\")"
        ),
    };
    let me = p.keypair.public().to_peer_id();
    let swarm = build_swarm(&p.keypair, &p.network)?;
    let dialing = bootstrap(&p.network, me)?;
    let quiet = 3 * Duration::from_millis(p.network.report_interval_ms.max(50));
    let mut office = Office::new(
        OfficeInit {
            office: p.office.name.clone(),
            key,
            token,
            shared_token: p.shared_token.clone(),
            name: p.name,
            cores: p.cores,
            builds: p.builds,
            keypair: p.keypair.clone(),
            quiet,
            first_grant: random_u64() >> 1,
        },
        Now::real(),
    );
    if let Some(text) = &p.office.revocations {
        office.adopt_revocations(text, Now::real());
    }
    let (view_tx, view) = watch::channel(office.view(Now::real()));
    let control = swarm.behaviour().stream.new_control();
    let state = Arc::new(Mutex::new(office));
    let (cmd, cmds) = mpsc::channel::<Cmd>(1024);
    let task = EventLoop {
        swarm,
        office: state.clone(),
        dialing,
        view: view_tx,
        taken,
        toolchains: p.toolchains,
        period: Duration::from_millis(p.network.report_interval_ms.max(50)),
        timeout: Duration::from_millis(p.network.liveness_timeout_ms.max(100)),
        waiting: Default::default(),
    };
    tokio::spawn(task.run(cmds));
    Ok(Arc::new(Net {
        state,
        cmd,
        control,
        me,
        view,
    }))
}

/// The configured bootstrap peers, to dial until they answer (and again
/// whenever they are lost).
fn bootstrap(network: &NetworkConfig, me: PeerId) -> Result<Dialing> {
    let mut dialing = Dialing::default();
    for b in &network.bootstrap {
        let addr: Multiaddr = b
            .parse()
            .with_context(|| format!("[network] bootstrap {b:?}"))?;
        let Some(Protocol::P2p(peer)) = addr.iter().last() else {
            anyhow::bail!("[network] bootstrap {b:?} must end in /p2p/<peer id>");
        };
        if peer != me {
            dialing
                .wanted
                .insert(peer, Wanted::new(addr, Instant::now(), true));
        }
    }
    Ok(dialing)
}
