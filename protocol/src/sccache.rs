//! sccache-dist's wire types (protocol v1, unchanged from mid-2023 to
//! sccache 0.19), field for field and variant for variant, so that an
//! unmodified sccache client can talk to a swarmcc node. They travel as
//! bincode 1 with its top-level defaults (little-endian, fixed-size
//! integers, `usize` as u64, enum variants as u32 in declaration order),
//! which is what [`encode`] and [`decode`] do. The golden bytes in the tests
//! are the reference's (`shared/reference/sccache-dist.md`, §2.2).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// bincode 1 top-level `serialize`, as sccache calls it.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).unwrap_or_default()
}

/// bincode 1 top-level `deserialize` (trailing bytes allowed, as sccache's),
/// with a size limit since the bytes come from the network.
pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, bincode::Error> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(b.len() as u64)
        .deserialize(b)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Toolchain {
    pub archive_id: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct JobId(pub u64);

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct ServerId(pub SocketAddr);

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Ready,
    Started,
    Complete,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompileCommand {
    pub executable: String,
    pub arguments: Vec<String>,
    pub env_vars: Vec<(String, String)>,
    pub cwd: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessOutput {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// zlib-compressed bytes and their uncompressed length (the client asserts
/// the length: a wrong one makes it panic).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputData(pub Vec<u8>, pub u64);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobAlloc {
    pub auth: String,
    pub job_id: JobId,
    pub server_id: ServerId,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum AllocJobHttpResponse {
    Success {
        job_alloc: JobAlloc,
        need_toolchain: bool,
        cert_digest: Vec<u8>,
    },
    Fail {
        msg: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerCertificateHttpResponse {
    pub cert_digest: Vec<u8>,
    pub cert_pem: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunJobHttpRequest {
    pub command: CompileCommand,
    pub outputs: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobComplete {
    pub output: ProcessOutput,
    pub outputs: Vec<(String, OutputData)>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum RunJobResult {
    JobNotFound,
    Complete(JobComplete),
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SchedulerStatusResult {
    pub num_servers: usize,
    pub num_cpus: usize,
    pub in_progress: usize,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum SubmitToolchainResult {
    Success,
    JobNotFound,
    CannotCache,
}

/// `sccache --dist-status`'s answer (externally tagged, as sccache's
/// `DistInfo`); the URL carries a trailing `/`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum DistInfo {
    Disabled(String),
    NotConnected(Option<String>, String),
    SchedulerStatus(Option<String>, SchedulerStatusResult),
}

/// sccache's rendering of a blake3 digest: each byte low nibble first.
pub fn archive_id(hash: &crate::Hash32) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in hash.0 {
        s.push(HEX[(b & 0xf) as usize] as char);
        s.push(HEX[(b >> 4) as usize] as char);
    }
    s
}

/// The blake3 digest behind an sccache archive id (None if malformed).
pub fn parse_archive_id(id: &str) -> Option<crate::Hash32> {
    let b = id.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        let lo = nib(b[2 * i])?;
        let hi = nib(b[2 * i + 1])?;
        *o = hi << 4 | lo;
    }
    Some(crate::Hash32(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn golden_bytes_match_sccache() {
        let sid: ServerId = ServerId("192.168.1.10:10501".parse().unwrap());
        assert_eq!(hex(&encode(&sid)), "00000000c0a8010a0529");
        let v6 = ServerId("[::1]:10501".parse().unwrap());
        assert_eq!(
            hex(&encode(&v6)),
            format!("01000000{}010529", "00".repeat(15))
        );
        let tc = Toolchain {
            archive_id: "ab".into(),
        };
        assert_eq!(hex(&encode(&tc)), "02000000000000006162");
        let st = SchedulerStatusResult {
            num_servers: 1,
            num_cpus: 8,
            in_progress: 0,
        };
        let b = encode(&st);
        assert_eq!(b.len(), 24);
        assert_eq!(hex(&b), "010000000000000008000000000000000000000000000000");
        assert_eq!(hex(&encode(&JobState::Complete)), "03000000");
        assert_eq!(
            hex(&encode(&SubmitToolchainResult::CannotCache)),
            "02000000"
        );
        assert_eq!(
            hex(&encode(&OutputData(vec![1, 2], 5))),
            "020000000000000001020500000000000000"
        );
        let ok = AllocJobHttpResponse::Success {
            job_alloc: JobAlloc {
                auth: "tok".into(),
                job_id: JobId(7),
                server_id: sid,
            },
            need_toolchain: true,
            cert_digest: vec![0xaa, 0xbb],
        };
        assert_eq!(
            hex(&encode(&ok)),
            "00000000\
             0300000000000000746f6b\
             0700000000000000\
             00000000c0a8010a0529\
             01\
             0200000000000000aabb"
        );
        let fail = AllocJobHttpResponse::Fail { msg: "no".into() };
        assert_eq!(hex(&encode(&fail)), "0100000002000000000000006e6f");
        // Decoding what we encode, and sccache's trailing-bytes tolerance.
        let mut b = encode(&ok);
        b.push(0);
        assert_eq!(decode::<AllocJobHttpResponse>(&b).unwrap(), ok);
    }

    #[test]
    fn status_json_and_dist_info_shapes_match_sccache() {
        let st = SchedulerStatusResult {
            num_servers: 3,
            num_cpus: 56,
            in_progress: 24,
        };
        assert_eq!(
            serde_json::to_string(&st).unwrap(),
            r#"{"num_servers":3,"num_cpus":56,"in_progress":24}"#
        );
        let url = Some("http://10.0.0.1:10600/".to_string());
        assert_eq!(
            serde_json::to_string(&DistInfo::SchedulerStatus(url.clone(), st)).unwrap(),
            r#"{"SchedulerStatus":["http://10.0.0.1:10600/",{"num_servers":3,"num_cpus":56,"in_progress":24}]}"#
        );
        assert_eq!(
            serde_json::to_string(&DistInfo::NotConnected(
                url,
                "could not communicate with scheduler".into()
            ))
            .unwrap(),
            r#"{"NotConnected":["http://10.0.0.1:10600/","could not communicate with scheduler"]}"#
        );
        assert_eq!(
            serde_json::to_string(&DistInfo::Disabled("disabled".into())).unwrap(),
            r#"{"Disabled":"disabled"}"#
        );
    }

    #[test]
    fn archive_ids_are_nibble_swapped_blake3() {
        let empty = crate::Hash32::of(b"");
        let id = archive_id(&empty);
        assert_eq!(
            id,
            "fa31949b5f9f1a6a0a04d4ae63cd9c94b9bc529cda1c217bcca939ac4ef12326"
        );
        assert_eq!(parse_archive_id(&id), Some(empty));
        assert_eq!(parse_archive_id("xyz"), None);
        assert_eq!(parse_archive_id(&"g".repeat(64)), None);
    }
}
