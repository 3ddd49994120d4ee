//! The node's HTTP side: sccache-dist compatibility, status, metrics and a
//! live dashboard.
//!
//! Plain HTTP on `[http] listen` (default 127.0.0.1:10600), as sccache's
//! scheduler: `GET /api/v1/scheduler/status` (bincode, or JSON with
//! `Accept: application/json`; no auth), `POST /api/v1/scheduler/alloc_job`,
//! `GET /api/v1/scheduler/server_certificate/{ip:port}`, plus `GET /metrics`
//! (Prometheus text), `GET /api/v1/office` (JSON for the dashboard) and the
//! dashboard at `/`.
//!
//! HTTPS on `[http] sccache_listen` (default 127.0.0.1:10501) with a
//! self-signed certificate made at start (SAN = that IP, serverAuth): the
//! builder endpoints an sccache client calls for the `server_id` an
//! allocation names: `submit_toolchain/{job_id}` and `run_job/{job_id}`.
//! Each job is relayed into the swarm like any compile of this node: the
//! coordinator allocates a builder, which fetches the toolchain (sccache's
//! gzip tar, stored by content) from this node or any holder.
//!
//! Transient trouble is never a 4xx (sccache fails the compile on a 4xx
//! instead of compiling locally): a full office is `Fail` at allocation, and
//! a job that cannot run is a 500.

mod sccache_dist;

pub use sccache_dist::parse_run_job;

use crate::config::HttpConfig;
use crate::jobs::Jobs;
use crate::stats::StatsStore;
use crate::store::ToolchainStore;
use anyhow::{anyhow, Context, Result};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use swarmcc_protocol::sccache::{self, SchedulerStatusResult};
use swarmcc_protocol::stats::Refusal;
use swarmcc_protocol::swarm::OfficeView;

/// What the HTTP side needs of the node.
pub struct HttpParams {
    pub config: HttpConfig,
    /// Where sccache clients' jobs run (the office, or this node alone).
    pub jobs: Arc<Jobs>,
    pub stats: Arc<StatsStore>,
    pub store: Arc<ToolchainStore>,
    /// The office's key and name, to accept office client tokens.
    pub office: Option<(swarmcc_protocol::token::OfficePublicKey, String)>,
    /// `[dist.auth]` shared secret, also accepted from sccache clients.
    pub shared_token: Option<String>,
    pub max_toolchain: u64,
}

struct Http {
    p: HttpParams,
    /// Jobs allocated to sccache clients.
    sccache: sccache_dist::Allocated,
    cert_digest: Vec<u8>,
    cert_pem: Vec<u8>,
    /// The HTTPS address sccache clients are sent to.
    builder_addr: SocketAddr,
}

/// Bind `addr`, or, when another process holds it (a second node on this
/// machine), an ephemeral port on the same address, saying so: only that
/// endpoint moves, the rest of the HTTP side stays. The status URL is in
/// `swarmcc status`; sccache clients are sent to the HTTPS port actually
/// bound.
fn bind_or_ephemeral(addr: SocketAddr, what: &str) -> Result<std::net::TcpListener> {
    match std::net::TcpListener::bind(addr) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() != 0 => {
            let l = std::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))
                .with_context(|| format!("binding {what} {addr}: {e}; and an ephemeral port"))?;
            tracing::warn!(
                "{what} {addr} is taken ({e}); serving on {} instead",
                l.local_addr()?
            );
            Ok(l)
        }
        Err(e) => Err(e).with_context(|| format!("binding {what} {addr}")),
    }
}

/// Bind and serve both listeners; the plain listener's URL. A port that is
/// taken moves to an ephemeral one ([`bind_or_ephemeral`]); an address that
/// cannot be bound at all is an error the caller logs, and the node keeps
/// working without HTTP.
pub async fn start(p: HttpParams) -> Result<String> {
    let listen: SocketAddr = p
        .config
        .listen
        .parse()
        .with_context(|| format!("[http] listen {:?}", p.config.listen))?;
    let tls_listen: SocketAddr = p
        .config
        .sccache_listen
        .parse()
        .with_context(|| format!("[http] sccache_listen {:?}", p.config.sccache_listen))?;
    let plain = bind_or_ephemeral(listen, "[http] listen")?;
    plain.set_nonblocking(true)?;
    let plain = tokio::net::TcpListener::from_std(plain)?;
    let plain_addr = plain.local_addr()?;
    let tls_std = bind_or_ephemeral(tls_listen, "[http] sccache_listen")?;
    tls_std.set_nonblocking(true)?;
    let builder_addr = tls_std.local_addr()?;
    let (cert_pem, key_pem, cert_digest) = self_signed(builder_addr)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(cert_pem.clone(), key_pem)
        .await
        .context("TLS configuration")?;
    let url = format!("http://{plain_addr}/");
    let http = Arc::new(Http {
        p,
        sccache: sccache_dist::Allocated::default(),
        cert_digest,
        cert_pem,
        builder_addr,
    });
    let app = Router::new()
        .route("/", get(dashboard))
        .route("/api/v1/office", get(office_json))
        .route("/metrics", get(metrics))
        .route("/api/v1/scheduler/status", get(status))
        .route("/api/v1/scheduler/alloc_job", post(sccache_dist::alloc_job))
        .route(
            "/api/v1/scheduler/server_certificate/{addr}",
            get(sccache_dist::server_certificate),
        )
        .layer(axum::middleware::from_fn_with_state(
            http.clone(),
            check_host,
        ))
        .with_state(http.clone());
    let builder_app = Router::new()
        .route(
            "/api/v1/distserver/submit_toolchain/{job_id}",
            post(sccache_dist::submit_toolchain),
        )
        .route(
            "/api/v1/distserver/run_job/{job_id}",
            post(sccache_dist::run_job),
        )
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            http.clone(),
            check_host,
        ))
        .with_state(http.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(plain, app).await {
            tracing::warn!("HTTP server stopped: {e}");
        }
    });
    let server =
        axum_server::from_tcp_rustls(tls_std, tls).map_err(|e| anyhow!("HTTPS listener: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = server.serve(builder_app.into_make_service()).await {
            tracing::warn!("HTTPS server stopped: {e}");
        }
    });
    tracing::info!(%url, sccache = %builder_addr, "HTTP status and sccache endpoints ready");
    Ok(url)
}

/// A certificate as sccache's builders make one: self-signed, CN and IP SAN
/// of the address, serverAuth, a year of validity. Returns (cert PEM, key
/// PEM, SHA-256 of the DER).
fn self_signed(addr: SocketAddr) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    use sha2::Digest;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, addr.to_string());
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(addr.ip())];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    // rcgen's default validity (1975 to 4096): a fresh certificate is made
    // at every start anyway.
    let cert = params.self_signed(&key)?;
    let digest = sha2::Sha256::digest(cert.der()).to_vec();
    Ok((
        cert.pem().into_bytes(),
        key.serialize_pem().into_bytes(),
        digest,
    ))
}

impl Http {
    fn view(&self) -> OfficeView {
        self.p.jobs.view()
    }

    /// The office's figures (this node alone when it has no office), as
    /// sccache-dist's scheduler reports them.
    fn figures(&self) -> SchedulerStatusResult {
        let v = self.view();
        SchedulerStatusResult {
            num_servers: v.builders as usize,
            num_cpus: v.cores as usize,
            in_progress: v.in_progress as usize,
        }
    }

    fn refused(&self, why: Refusal) {
        self.p.stats.update(|s| s.refuse(why));
    }
}

/// Requests are answered only when addressed to this node by an IP
/// address, `localhost`, or a name in `[http] allowed_hosts`. A web page the
/// developer visits could otherwise point a name of its own at 127.0.0.1
/// (DNS rebinding) and read the office's status and metrics through the
/// developer's browser, which sends that name as `Host`.
async fn check_host(
    State(h): State<Arc<Http>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    if let Some(host) = host {
        if !host_allowed(host, &h.p.config.allowed_hosts) {
            tracing::warn!(host, "HTTP request for another host refused");
            h.refused(Refusal::HttpHost);
            return (StatusCode::MISDIRECTED_REQUEST, "unknown host\n").into_response();
        }
    }
    next.run(req).await
}

/// Whether a `Host` header (with or without a port) names this node.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:10600`.
        Some(rest) => match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') => ip,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

fn ct_eq(a: &str, b: &str) -> bool {
    crate::util::ct_eq(a.as_bytes(), b.as_bytes())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn unauthorized(code: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, format!("Bearer error=\"{code}\""))],
        code.to_string(),
    )
        .into_response()
}

/// sccache's `ErrJson` body for 400 and 500.
fn error(status: StatusCode, description: &str) -> Response {
    let body = serde_json::json!({ "description": description, "cause": null });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"))
}

/// bincode by default, JSON when asked for (as rouille's `accept!`).
fn reply<T: serde::Serialize>(headers: &HeaderMap, v: &T) -> Response {
    if wants_json(headers) {
        (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(v).unwrap_or_default(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            sccache::encode(v),
        )
            .into_response()
    }
}

async fn status(State(h): State<Arc<Http>>, headers: HeaderMap) -> Response {
    reply(&headers, &h.figures())
}

#[derive(serde::Serialize)]
struct OfficePage {
    view: OfficeView,
    stats: swarmcc_protocol::stats::Stats,
    status: SchedulerStatusResult,
}

async fn office_json(State(h): State<Arc<Http>>) -> Response {
    let page = OfficePage {
        view: h.view(),
        stats: h.p.stats.snapshot(),
        status: h.figures(),
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&page).unwrap_or_default(),
    )
        .into_response()
}

async fn metrics(State(h): State<Arc<Http>>) -> Response {
    let text = crate::api::metrics::render(&h.view(), &h.p.stats.snapshot(), &h.figures());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_for_this_node_by_address_or_allowed_name_are_answered() {
        let allowed = vec!["build-1.office.lan".to_string()];
        for ok in [
            "127.0.0.1:10600",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:10600",
            "[::1]",
            "localhost:10600",
            "LOCALHOST",
            "build-1.office.lan:10600",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "attacker.example:10600",
            "attacker.example",
            "127.0.0.1.attacker.example",
            "localhost.attacker.example",
            "[::1]x",
            "",
            "\u{0}",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }
}
