//! The TOML configuration shared by the wrapper and the node.
//!
//! Where a key means the same as in sccache's `[dist]` section it has sccache's
//! name (`toolchains`, `toolchain_cache_size`, `rewrite_includes_only`,
//! `cache_dir`). Unknown keys are errors that name the key, so a typo never
//! silently changes behaviour.

use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};

/// Where the config file is looked up, in order: `$SWARMCC_CONFIG`,
/// `$SWARMCC_DIR/config.toml`, `$XDG_CONFIG_HOME/swarmcc/config.toml`,
/// `~/.config/swarmcc/config.toml`; for root without `HOME` (a system
/// service), `/etc/swarmcc/config.toml`. A missing file means all defaults.
pub(crate) fn config_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SWARMCC_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("SWARMCC_DIR") {
        return Ok(PathBuf::from(d).join("config.toml"));
    }
    Ok(match xdg_dir("XDG_CONFIG_HOME", ".config")? {
        Some(d) => d.join("swarmcc").join("config.toml"),
        None => PathBuf::from("/etc/swarmcc/config.toml"),
    })
}

/// All state (cache, toolchains, socket, stats, logs) lives here:
/// `$SWARMCC_DIR`, else `$XDG_CACHE_HOME/swarmcc`, else `~/.cache/swarmcc`;
/// for root without `HOME` (a system service), `/var/lib/swarmcc`.
pub fn state_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("SWARMCC_DIR") {
        return Ok(PathBuf::from(d));
    }
    Ok(match xdg_dir("XDG_CACHE_HOME", ".cache")? {
        Some(d) => d.join("swarmcc"),
        None => PathBuf::from("/var/lib/swarmcc"),
    })
}

/// `$var` if it is an absolute path (the XDG rule), else `$HOME/fallback`.
/// `None` for root without `HOME`, whose files go to the system's places.
/// Anyone else without `HOME` gets an error: falling back to a directory
/// every user can write to (as `/tmp`) would let another user plant a
/// config or a state directory there first.
fn xdg_dir(var: &str, fallback: &str) -> anyhow::Result<Option<PathBuf>> {
    xdg_dir_of(
        std::env::var_os(var),
        std::env::var_os("HOME"),
        crate::ownership::euid(),
        fallback,
    )
}

fn xdg_dir_of(
    var: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
    euid: u32,
    fallback: &str,
) -> anyhow::Result<Option<PathBuf>> {
    let absolute = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(d) = absolute(var) {
        return Ok(Some(d));
    }
    match absolute(home) {
        Some(home) => Ok(Some(home.join(fallback))),
        None if euid == 0 => Ok(None),
        None => anyhow::bail!(
            "HOME is not set to an absolute path: set HOME, or SWARMCC_DIR (state) and \
             SWARMCC_CONFIG (config)"
        ),
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub cache: CacheConfig,
    pub node: NodeConfig,
    pub sandbox: SandboxConfig,
    pub dist: DistConfig,
    pub network: NetworkConfig,
    /// Office membership; without it the node works alone (no network).
    pub office: Option<OfficeConfig>,
    /// Status, metrics, dashboard and the sccache-dist endpoints.
    pub http: HttpConfig,
    /// The state directory ([`state_dir`]), resolved when loading.
    #[serde(skip)]
    pub state: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve HTTP at all.
    pub enabled: bool,
    /// sccache's scheduler address: status, `alloc_job`, metrics, dashboard.
    pub listen: String,
    /// HTTPS address given to sccache clients as their builder (`server_id`).
    pub sccache_listen: String,
    /// sccache's scheduler `client_auth` for `alloc_job`; office client
    /// tokens and the `[dist.auth]` secret are accepted as well.
    pub client_auth: Option<ClientAuth>,
    /// Host names (besides IP addresses and `localhost`) that requests may
    /// be addressed to, e.g. the machine's DNS name for a dashboard opened
    /// by name. Others are refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: "127.0.0.1:10600".into(),
            sccache_listen: "127.0.0.1:10501".into(),
            client_auth: None,
            allowed_hosts: Vec::new(),
        }
    }
}

/// sccache's scheduler-side client auth.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ClientAuth {
    /// The token must be `dangerously_insecure_client` (sccache's default).
    #[serde(rename = "DANGEROUSLY_INSECURE")]
    DangerouslyInsecure,
    /// A shared token.
    #[serde(rename = "token")]
    Token { token: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// libp2p listen multiaddrs.
    pub listen: Vec<String>,
    /// Peers to dial at start and keep dialing (multiaddrs ending in /p2p/<id>),
    /// for offices spanning subnets or runs without mDNS.
    pub bootstrap: Vec<String>,
    /// Discover peers on the LAN by mDNS.
    pub mdns: bool,
    /// A member not heard from for this long is lost.
    pub liveness_timeout_ms: u64,
    /// How often a node reports to its peers.
    pub report_interval_ms: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: vec!["/ip4/0.0.0.0/tcp/10601".into()],
            bootstrap: Vec::new(),
            mdns: true,
            liveness_timeout_ms: 2000,
            report_interval_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfficeConfig {
    pub name: String,
    /// `swcc-office:...` as `swarmcc office init` printed it.
    pub public_key: String,
    /// This machine's builder token, or a file holding it.
    pub builder_token: Option<String>,
    pub builder_token_file: Option<PathBuf>,
    /// A client token (for machines that only submit), or a file holding it.
    pub client_token: Option<String>,
    pub client_token_file: Option<PathBuf>,
    /// An office-signed revocation list (`swarmcc office revoke`).
    pub revocations: Option<String>,
}

impl OfficeConfig {
    /// The token this node presents: its builder token, else its client token.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        let read =
            |inline: &Option<String>, file: &Option<PathBuf>| -> anyhow::Result<Option<String>> {
                match (inline, file) {
                    (Some(t), _) => Ok(Some(t.trim().to_string())),
                    (None, Some(f)) => Ok(Some(
                        std::fs::read_to_string(f)
                            .map_err(|e| anyhow::anyhow!("token file {}: {e}", f.display()))?
                            .trim()
                            .to_string(),
                    )),
                    (None, None) => Ok(None),
                }
            };
        Ok(match read(&self.builder_token, &self.builder_token_file)? {
            Some(t) => Some(t),
            None => read(&self.client_token, &self.client_token_file)?,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Turn the result cache off (every compile runs).
    pub enabled: bool,
    /// Default: `<state>/cache`.
    pub dir: Option<PathBuf>,
    /// Bytes, or a string like "10G". Default 10 GiB.
    #[serde(deserialize_with = "de_size")]
    pub size: u64,
    /// Direct mode (as ccache's): answer a compile whose arguments, source and
    /// every header it read are unchanged without running the preprocessor.
    pub direct: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            dir: None,
            size: 10 << 30,
            direct: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Unix socket of the local API. Default: `<state>/node.sock`.
    pub socket: Option<PathBuf>,
    /// Jobs run at once. Default: number of cores.
    pub max_jobs: Option<usize>,
    /// Run compile jobs at all. A node with `builder = false` only forwards.
    pub builder: bool,
    /// Seconds the wrapper waits for a freshly started node's socket.
    pub start_timeout_secs: u64,
    /// The name shown for this node in status and stats. Default: the host name.
    pub name: Option<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            socket: None,
            max_jobs: None,
            builder: true,
            start_timeout_secs: 10,
            name: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// The bubblewrap binary.
    pub bwrap: PathBuf,
    /// Wall-clock limit of one compiler run.
    pub timeout_secs: u64,
    /// Address-space limit of each process in a job.
    #[serde(deserialize_with = "de_size")]
    pub memory_limit: u64,
    /// Limit of each file a job writes, of its outputs together, and of its
    /// stdout and stderr.
    #[serde(deserialize_with = "de_size")]
    pub output_limit: u64,
    /// Processes one job may run at once (enforced when the node runs as root,
    /// through a per-slot uid).
    pub max_processes: u64,
    /// First uid of the per-slot unprivileged users (root nodes only); the
    /// gid below it is the group of all of them.
    pub uid_base: u32,
    /// Where a root node keeps the files its sandboxes see (job trees,
    /// source blobs, unpacked toolchains). It and every directory above it
    /// must be root's and writable by root alone. Default:
    /// `/var/lib/swarmcc-sandbox/sandbox-<hash of the state dir>`.
    pub dir: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            bwrap: PathBuf::from("bwrap"),
            timeout_secs: 600,
            memory_limit: 8 << 30,
            output_limit: 1 << 30,
            max_processes: 64,
            uid_base: 3_900_000,
            dir: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    /// Custom toolchains, sccache's `[[dist.toolchains]]`.
    pub toolchains: Vec<CustomToolchain>,
    /// Bytes (or "10G") of toolchain archives kept. Default 10 GiB.
    #[serde(deserialize_with = "de_size")]
    pub toolchain_cache_size: u64,
    /// Toolchain store directory. Default: `<state>/toolchains`.
    pub cache_dir: Option<PathBuf>,
    /// Preprocess on the client with gcc `-fdirectives-only` / clang
    /// `-frewrite-includes` (no macro expansion: faster). The client's
    /// preprocessed text only keys the cache and checks the builder's inputs;
    /// the builder always compiles the real sources, so objects and
    /// diagnostics are the same either way.
    pub rewrite_includes_only: bool,
    /// Re-run the client's preprocessing on the builder before every compile
    /// and compare hashes. Off by default: the compile's own dependency list
    /// already proves it read only carried, hash-verified files, and the full
    /// check still runs whenever that proof fails or the compile fails. What
    /// only this catches: `__has_include` of a file that exists on the client
    /// but is never included.
    pub strict_inputs: bool,
    /// On a unit's first compile (no earlier manifest to guess from), follow
    /// its `#include`s in the compiler's search path instead of running the
    /// local preprocessor, and carry the files found; the builder's
    /// dependency list must prove the guess, as for any speculative job.
    pub scan_includes: bool,
    /// When every builder slot of the office is taken: `"local"` (compile
    /// on this machine at once, as sccache does) or `"wait"` (ask again
    /// until a slot frees, up to the sandbox timeout).
    pub when_full: WhenFull,
    /// Attempts on builders (each after a builder is lost or refuses the
    /// job) before the client compiles it locally.
    pub max_attempts: u32,
    /// sccache's client auth. Only `type = "token"` (a shared secret): a
    /// node with no office token presents it and joins as a client; a node
    /// with the same secret accepts such clients.
    pub auth: Option<DistAuth>,
    /// Fetch a missing toolchain from the peers the coordinator names (other
    /// builders, even while they are still receiving it), the job's client
    /// last. `false`: from the client only (for comparison benchmarks).
    pub fetch_toolchains_from_peers: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DistAuth {
    Token { token: String },
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    Local,
    Wait,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig {
            toolchains: Vec::new(),
            toolchain_cache_size: 10 << 30,
            cache_dir: None,
            rewrite_includes_only: true,
            strict_inputs: false,
            scan_includes: true,
            when_full: WhenFull::Local,
            max_attempts: 3,
            auth: None,
            fetch_toolchains_from_peers: true,
        }
    }
}

/// sccache's custom toolchain entries.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CustomToolchain {
    /// Use a prebuilt archive for this compiler.
    PathOverride {
        compiler_executable: PathBuf,
        archive: PathBuf,
        archive_compiler_executable: String,
    },
    /// Never distribute this compiler.
    NoDist { compiler_executable: PathBuf },
}

impl Config {
    /// Load from [`config_path`]; a missing file gives the defaults. The
    /// file must be this user's or root's and writable by nobody else (it
    /// names programs the node runs).
    pub fn load() -> anyhow::Result<Config> {
        let mut cfg = Self::load_from(&config_path()?)?;
        cfg.state = state_dir()?;
        Ok(cfg)
    }

    pub(crate) fn load_from(path: &Path) -> anyhow::Result<Config> {
        match crate::ownership::read_trusted(path) {
            Ok(Some(text)) => {
                Self::parse(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
            }
            Ok(None) => Ok(Config::default()),
            Err(e) => Err(anyhow::anyhow!("config: {e:#}")),
        }
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    pub fn socket_path(&self) -> PathBuf {
        self.node
            .socket
            .clone()
            .unwrap_or_else(|| self.state.join("node.sock"))
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache
            .dir
            .clone()
            .unwrap_or_else(|| self.state.join("cache"))
    }

    pub(crate) fn toolchain_dir(&self) -> PathBuf {
        self.dist
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.state.join("toolchains"))
    }

    /// The group every job slot's uid is in (root nodes): the
    /// sandbox-visible files are closed to everyone else
    /// ([`crate::build::sandbox::sandbox_dir`]). One below `uid_base`.
    pub(crate) fn jobs_gid(&self) -> u32 {
        self.sandbox.uid_base.saturating_sub(1)
    }

    pub fn max_jobs(&self) -> usize {
        self.node.max_jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }

    /// The custom toolchain entry for a compiler path, if any.
    pub fn custom_toolchain(&self, compiler: &Path) -> Option<&CustomToolchain> {
        self.dist.toolchains.iter().find(|t| match t {
            CustomToolchain::PathOverride {
                compiler_executable,
                ..
            }
            | CustomToolchain::NoDist {
                compiler_executable,
            } => compiler_executable == compiler,
        })
    }
}

/// Accept `1073741824`, `"1G"`, `"512M"`, `"64K"`, `"10GiB"`.
fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

/// Parse a size such as "10G" (powers of 1024).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("bad size unit in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_sccache_names() {
        let c = Config::parse(
            r#"
            [cache]
            size = "2G"
            [dist]
            toolchain_cache_size = 1048576
            rewrite_includes_only = false
            [[dist.toolchains]]
            type = "path_override"
            compiler_executable = "/usr/bin/cc"
            archive = "/tmp/tc.tar.zst"
            archive_compiler_executable = "/usr/bin/gcc"
            [[dist.toolchains]]
            type = "no_dist"
            compiler_executable = "/opt/weird/cc"
            "#,
        )
        .unwrap();
        assert_eq!(c.cache.size, 2 << 30);
        assert_eq!(c.dist.toolchain_cache_size, 1 << 20);
        assert!(!c.dist.rewrite_includes_only);
        assert_eq!(c.dist.toolchains.len(), 2);
        assert!(matches!(
            c.custom_toolchain(Path::new("/opt/weird/cc")),
            Some(CustomToolchain::NoDist { .. })
        ));
        assert!(c.custom_toolchain(Path::new("/usr/bin/gcc")).is_none());
        let d = Config::default();
        assert!(d.cache.enabled && d.node.builder && d.dist.rewrite_includes_only);
    }

    #[test]
    fn unknown_keys_are_named_in_the_error() {
        let e = Config::parse("[cache]\nsizee = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sizee"), "{e}");
        let e = Config::parse("[nope]\n").unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn without_home_root_uses_the_system_places_and_others_get_an_error() {
        let of = |var: Option<&str>, home: Option<&str>, euid| {
            xdg_dir_of(var.map(Into::into), home.map(Into::into), euid, ".cache")
        };
        assert_eq!(
            of(Some("/x/cache"), None, 1000).unwrap(),
            Some(PathBuf::from("/x/cache"))
        );
        assert_eq!(
            of(None, Some("/home/ann"), 1000).unwrap(),
            Some(PathBuf::from("/home/ann/.cache"))
        );
        // Relative values do not count (the XDG rule), and never mean /tmp.
        assert_eq!(
            of(Some("rel"), Some("/root"), 0).unwrap(),
            Some(PathBuf::from("/root/.cache"))
        );
        assert_eq!(of(None, None, 0).unwrap(), None);
        assert_eq!(of(None, Some(""), 0).unwrap(), None);
        let e = of(None, None, 1000).unwrap_err().to_string();
        assert!(e.contains("HOME is not set"), "{e}");
        assert!(of(Some("tmp"), Some("tmp"), 1000).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("7").unwrap(), 7);
        assert!(parse_size("5X").is_err());
        assert!(parse_size("99999999999999T").is_err());
    }
}
