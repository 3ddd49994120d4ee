//! Every decoder of bytes that come from outside the process, by name: what
//! the fuzz targets (`fuzz/`) drive, and what the test command replays the
//! kept corpus through (`tests/fuzz_corpus.rs`). A decoder may refuse its
//! input; it must never panic, hang or allocate without bound.

use swarmcc_protocol::frame::{self, LOCAL_FRAME_MAX};
use swarmcc_protocol::{local, sccache, swarm, transfer};

/// A decoder: takes any bytes, returns nothing, never panics.
pub type Decoder = fn(&[u8]);

/// `(name, decoder)`: the name is the fuzz target's and its corpus
/// directory's (`fuzz/corpus/<name>`).
pub const ALL: &[(&str, Decoder)] = &[
    ("local_socket", local_socket),
    ("control", control),
    ("job_stream", job_stream),
    ("toolchain_stream", toolchain_stream),
    ("tokens", tokens),
    ("sccache_alloc", sccache_alloc),
    ("sccache_run_job", sccache_run_job),
    ("toolchain_archive", toolchain_archive),
    ("cache_entry", cache_entry),
    ("file_info", swarmcc_file_info),
    ("config", config),
    ("dependency_file", dependency_file),
    ("state_files", state_files),
    ("include_scan", include_scan),
];

/// Run the decoder called `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match ALL.iter().find(|(n, _)| *n == name) {
        Some((_, f)) => f(data),
        None => panic!("no decoder {name}"),
    }
}

/// Frames as a stream on the local socket, read as the node reads requests
/// and as the wrapper reads answers.
fn local_socket(data: &[u8]) {
    let mut r = data;
    while let Ok(body) = frame::read_frame_body(&mut r, LOCAL_FRAME_MAX) {
        let _ = frame::decode::<local::Request>(&body);
        let _ = frame::decode::<local::Response>(&body);
    }
}

/// Control messages between nodes (Hello, reports, allocation, release).
fn control(data: &[u8]) {
    let _ = frame::decode::<swarm::CtlRequest>(data);
    let _ = frame::decode::<swarm::CtlResponse>(data);
}

/// What travels on a job stream, including the grant's own check.
fn job_stream(data: &[u8]) {
    if let Ok(offer) = frame::decode::<transfer::JobOffer>(data) {
        let _ = swarmcc_node::swarm::coordinator::verify_grant(
            &offer.grant,
            "builder",
            &transfer::job_hash(&offer.job),
            0,
            |_| true,
        );
    }
    let _ = frame::decode::<transfer::OfferAnswer>(data);
    let _ = frame::decode::<swarmcc_protocol::job::Blob>(data);
    let _ = frame::decode::<transfer::JobReply>(data);
}

fn toolchain_stream(data: &[u8]) {
    let _ = frame::decode::<transfer::ToolchainRequest>(data);
    let _ = frame::decode::<transfer::ToolchainAnswer>(data);
}

/// Office tokens, revocation lists and office keys, in text form.
fn tokens(data: &[u8]) {
    use swarmcc_protocol::token::{OfficePublicKey, RevocationList, Token};
    let text = String::from_utf8_lossy(data);
    static KEY: std::sync::LazyLock<OfficePublicKey> =
        std::sync::LazyLock::new(|| swarmcc_protocol::token::OfficeKey::generate("o").public());
    if let Ok(t) = text.parse::<Token>() {
        let _ = t.verify_client(&KEY, "o", 0, None);
    }
    let _ = text.parse::<RevocationList>();
    let _ = text.parse::<OfficePublicKey>();
}

/// sccache's `alloc_job` body and the request's `Host`.
fn sccache_alloc(data: &[u8]) {
    if let Ok(tc) = sccache::decode::<sccache::Toolchain>(data) {
        let _ = sccache::parse_archive_id(&tc.archive_id);
    }
    let _ = sccache::decode::<sccache::AllocJobHttpResponse>(data);
    let _ = swarmcc_node::api::http::host_allowed(&String::from_utf8_lossy(data), &[]);
}

/// sccache's `run_job` body: length, command, zlib of a tar of inputs.
fn sccache_run_job(data: &[u8]) {
    let tc = swarmcc_protocol::ToolchainId(swarmcc_protocol::Hash32::of(b""));
    let _ = swarmcc_node::api::http::parse_run_job(data, tc);
}

/// A toolchain archive (zstd, gzip or plain tar), decoded and checked
/// entry by entry; bounds small enough for a fuzzer's pace.
fn toolchain_archive(data: &[u8]) {
    use swarmcc_node::store::unpack::{check_archive, Limits};
    let _ = check_archive(
        data,
        Limits {
            entries: 10_000,
            bytes: 64 << 20,
        },
    );
}

/// A cache entry on disk, as found, and with its framing put right (so that
/// the payload's decoding is reached too).
fn cache_entry(data: &[u8]) {
    use swarmcc_node::store::cache::{decode_entry, seal};
    use swarmcc_protocol::local::Manifest;
    use swarmcc_protocol::JobResult;
    let _ = decode_entry::<JobResult>(data);
    let _ = decode_entry::<Manifest>(data);
    let sealed = seal(data);
    let _ = decode_entry::<JobResult>(&sealed);
    let _ = decode_entry::<Manifest>(&sealed);
}

fn swarmcc_file_info(data: &[u8]) {
    crate::fileinfo::fuzz(data);
}

fn config(data: &[u8]) {
    let _ = swarmcc_node::config::Config::parse(&String::from_utf8_lossy(data));
}

fn dependency_file(data: &[u8]) {
    let _ = swarmcc_protocol::depfile::check(data, Some("a.o"), |p| p.len() % 2 == 0);
    let _ = swarmcc_protocol::depfile::check(data, None, |_| true);
}

/// The small files a node and its wrapper keep in the state dir: stats, the
/// packaged compilers' index, the toolchain remembered per compiler, an
/// include search path, and what bubblewrap tells of its sandbox.
fn state_files(data: &[u8]) {
    let _ = serde_json::from_slice::<swarmcc_protocol::stats::Stats>(data);
    let _ = swarmcc_node::store::compilers::index_len(data);
    let _ = crate::last_toolchain::decode(data);
    let _ = crate::scan::SearchPath::parse(&String::from_utf8_lossy(data));
    let _ = swarmcc_node::build::sandbox::parse_child_pid(data);
}

/// Source text as the include scan reads it, and preprocessor output as the
/// client reads its line markers.
fn include_scan(data: &[u8]) {
    let _ = crate::directives::directives(data);
    let _ = crate::sources::line_marker_files(data);
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_decoder_takes_empty_and_junk_input() {
        for (name, f) in super::ALL {
            f(b"");
            f(&[0xff; 64]);
            f(&[0; 64]);
            let _ = name;
        }
    }
}
