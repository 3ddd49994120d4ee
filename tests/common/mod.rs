//! Shared helpers for the integration tests: real `swarmcc` processes with
//! their own `SWARMCC_DIR`, real gcc, real bubblewrap.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Successful distributed compiles over all builders, from a node's
/// `stats` object (`--stats-format json`'s `"stats"`).
pub fn dist_total(stats: &serde_json::Value) -> u64 {
    stats["dist_compiles"]
        .as_object()
        .expect("dist_compiles is an object")
        .values()
        .map(|v| v.as_u64().expect("a count"))
        .sum()
}

pub fn swarmcc() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_swarmcc"))
}

/// Refuse (loudly) to run where the real parts are missing, rather than pass.
pub fn require_tools() {
    for tool in ["gcc", "make", "bwrap"] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{tool} is required: run the README's test command, which installs it"
        );
    }
}

/// An isolated swarmcc environment: its own state dir and config.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub node: Option<Child>,
    /// The network namespace the node runs in (simulations), if any.
    pub netns: Option<String>,
    /// The uid the node runs as, if not this process's (see `start_node_as`).
    pub node_uid: Option<u32>,
    /// The node's socket, if its config puts it elsewhere than the state dir.
    pub socket_at: Option<PathBuf>,
}

impl Env {
    pub fn new(config: &str) -> Env {
        require_tools();
        let dir = tempfile::Builder::new()
            .prefix("swarmcc-test-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        Env {
            dir,
            node: None,
            netns: None,
            node_uid: None,
            socket_at: None,
        }
    }

    pub fn state(&self) -> &Path {
        self.dir.path()
    }

    /// Where the node keeps what its sandboxes see (job trees, source
    /// blobs, unpacked toolchains): its state dir, or, for a root node, a
    /// directory of root's named after it (`node/src/build/sandbox/place.rs`).
    pub fn sandbox_base(&self) -> PathBuf {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || self.node_uid.is_some() {
            return self.state().to_path_buf();
        }
        Path::new(swarmcc_node::build::sandbox::SYSTEM_BASE).join(
            swarmcc_node::build::sandbox::default_base_name(self.state()),
        )
    }

    pub fn socket(&self) -> PathBuf {
        self.socket_at
            .clone()
            .unwrap_or_else(|| self.state().join("node.sock"))
    }

    /// A command with this environment's variables.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("SWARMCC_DIR", self.state())
            .env_remove("SWARMCC_CONFIG")
            .env("LANG", "C.UTF-8");
        c
    }

    /// Start `swarmcc node` in the foreground as `uid` (an ordinary user,
    /// no per-slot uids): the state dir becomes that user's.
    pub fn start_node_as(&mut self, uid: u32) {
        use std::os::unix::process::CommandExt;
        chown_tree(self.state(), uid);
        self.node_uid = Some(uid);
        let log = self.state().join("test-node.log");
        let child = self
            .cmd(swarmcc())
            .env("HOME", self.state())
            .arg("node")
            .uid(uid)
            .gid(uid)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        self.node = Some(child);
        self.wait_socket();
    }

    /// Start `swarmcc node` in the foreground (as a child we can kill).
    pub fn start_node(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state().join("test-node.log"))
            .unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = self.cmd("ip");
                c.args(["netns", "exec", ns]).arg(swarmcc());
                c
            }
            None => self.cmd(swarmcc()),
        };
        let child = cmd
            .arg("node")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.node = Some(child);
        self.wait_socket();
    }

    pub fn wait_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("node did not come up; log:\n{}", self.node_log());
    }

    pub fn node_log(&self) -> String {
        let a = std::fs::read_to_string(self.state().join("test-node.log")).unwrap_or_default();
        let b = std::fs::read_to_string(self.state().join("node.log")).unwrap_or_default();
        format!("{a}{b}")
    }

    /// The last 80 lines of the node's log and its office view's
    /// figures: what a failing scenario prints to say why.
    pub fn diagnosis(&self) -> String {
        let log = self.node_log();
        let notable: Vec<&str> = log
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("handled"))
            .collect();
        let tail = &notable[notable.len().saturating_sub(80)..];
        let v = self
            .cmd(swarmcc())
            .args(["status", "--json"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        format!(
            "--- {} ---\nview: {v}\n{}\n",
            self.state().display(),
            tail.join("\n")
        )
    }

    /// The node process's resident memory, in KiB.
    pub fn node_rss_kib(&self) -> Option<u64> {
        let pid = self.node.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    pub fn kill_node(&mut self) {
        if let Some(mut c) = self.node.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stats_json(&self) -> serde_json::Value {
        let out = self
            .cmd(swarmcc())
            .args(["--show-stats", "--stats-format", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["stats"].clone()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.cmd(swarmcc()).arg("--stop-server").output();
        self.kill_node();
        let base = self.sandbox_base();
        if base != self.state() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// Give `dir` and everything below it to `uid` (as uid and gid).
pub fn chown_tree(dir: &Path, uid: u32) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid)).unwrap();
    if std::fs::symlink_metadata(dir).unwrap().is_dir() {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            chown_tree(&e.path(), uid);
        }
    }
}

/// `tests/common/probe.c` (what a hostile job or another local user tries)
/// built as a static program in `dir`: it runs in a sandbox as its own
/// toolchain, and under any uid.
pub fn probe(dir: &Path) -> PathBuf {
    let out = dir.join("probe");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/probe.c");
    run_ok(
        Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&out)
            .arg(src),
    );
    out
}

/// Run `probe` with `args` as `uid`; its output.
pub fn probe_as(probe: &Path, uid: u32, args: &[&std::ffi::OsStr]) -> String {
    use std::os::unix::process::CommandExt;
    let out = run_ok(Command::new(probe).args(args).uid(uid).gid(uid));
    String::from_utf8(out.stdout).unwrap()
}

pub fn run_ok(c: &mut Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `sub` of a pinned dev-dependency `krate` (e.g. `lua-src-551.1.0`), which
/// cargo has unpacked into its registry; `marker` is a file it must hold.
pub fn crate_sources(krate: &str, sub: &str, marker: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    for reg in std::fs::read_dir(home.join("registry/src"))
        .expect("cargo registry")
        .flatten()
    {
        let dir = reg.path().join(krate).join(sub);
        if dir.join(marker).exists() {
            return dir;
        }
    }
    panic!("{krate}/{sub} not found under {}", home.display());
}

/// The Lua 5.4 sources that ship inside the `lua-src` crate.
pub fn lua_sources() -> PathBuf {
    crate_sources("lua-src-551.1.0", "lua-5.4.9", "lapi.c")
}

/// A Lua project: the crate's sources, a tiny `main.c` and a Makefile with
/// dependency files, in `dir/lua`.
pub fn make_lua_project(dir: &Path) -> PathBuf {
    let proj = dir.join("lua");
    std::fs::create_dir_all(proj.join("src")).unwrap();
    let mut objs = Vec::new();
    for e in std::fs::read_dir(lua_sources()).unwrap().flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(&p, proj.join("src").join(&name)).unwrap();
        if let Some(stem) = name.strip_suffix(".c") {
            objs.push(format!("obj/{stem}.o"));
        }
    }
    std::fs::write(
        proj.join("src/main.c"),
        r#"#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"
#include <stdio.h>
int main(int argc, char **argv) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_dostring(L, argc > 1 ? argv[1] : "print('hello')")) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        return 1;
    }
    lua_close(L);
    return 0;
}
"#,
    )
    .unwrap();
    objs.push("obj/main.o".into());
    objs.sort();
    let makefile = format!(
        "CC ?= gcc\nCFLAGS = -O2 -g -Wall -Wextra -std=gnu99 -DLUA_COMPAT_5_3 -DLUA_USE_LINUX\nOBJS = {}\n\n\
         all: luatest\n\n\
         luatest: $(OBJS)\n\tgcc -o $@ $(OBJS) -lm -ldl\n\n\
         obj/%.o: src/%.c\n\t@mkdir -p obj\n\t$(CC) $(CFLAGS) -MMD -c $< -o $@\n\n\
         clean:\n\trm -rf obj luatest\n\n-include $(OBJS:.o=.d)\n",
        objs.join(" ")
    );
    std::fs::write(proj.join("Makefile"), makefile).unwrap();
    proj
}

/// Every `obj/*.o` and `obj/*.d` of a project, by name.
pub fn objects(proj: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(proj.join("obj"))
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Processes still running as one of the sandbox slot uids.
pub fn sandbox_processes(uid_base: u32) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        if let Some(uid_line) = status.lines().find(|l| l.starts_with("Uid:")) {
            let uid: u32 = uid_line
                .split_whitespace()
                .nth(1)
                .and_then(|u| u.parse().ok())
                .unwrap_or(0);
            if uid >= uid_base && uid < uid_base + 1000 {
                found.push(status.lines().next().unwrap_or("").to_string());
            }
        }
    }
    found
}

/// Run a command that must succeed; its stdout, trimmed.
pub fn out(c: &mut Command) -> String {
    String::from_utf8(run_ok(c).stdout)
        .unwrap()
        .trim()
        .to_string()
}

/// A node of a test office: its own state dir, config and process.
pub fn office_node(
    office_key: &std::path::Path,
    pk: &str,
    boot: Option<&str>,
    token: Option<String>,
    extra: &str,
) -> (Env, String) {
    office_node_with(office_key, pk, boot, token, "max_jobs = 3", extra)
}

/// [`office_node`] with the lines of its `[node]` section given.
pub fn office_node_with(
    office_key: &std::path::Path,
    pk: &str,
    boot: Option<&str>,
    token: Option<String>,
    node_section: &str,
    extra: &str,
) -> (Env, String) {
    office_node_at(
        office_key,
        pk,
        boot,
        token,
        node_section,
        extra,
        "127.0.0.1",
        None,
    )
}

/// [`office_node_with`] listening on `ip` inside network namespace `netns`.
#[allow(clippy::too_many_arguments)]
pub fn office_node_at(
    office_key: &std::path::Path,
    pk: &str,
    boot: Option<&str>,
    token: Option<String>,
    node_section: &str,
    extra: &str,
    ip: &str,
    netns: Option<&str>,
) -> (Env, String) {
    let mut env = Env::new("");
    env.netns = netns.map(String::from);
    // mDNS only inside a test's own namespaces: in the root namespace it
    // would multicast out of the machine's uplink.
    let mdns = netns.is_some();
    let peer = out(env.cmd(swarmcc()).args(["node", "id"]));
    let token = token.unwrap_or_else(|| {
        out(Command::new(swarmcc())
            .args([
                "token",
                "builder",
                "--coordinator",
                "--peer",
                &peer,
                "--office-key",
            ])
            .arg(office_key))
    });
    let boot = boot.map(|b| format!("\"{b}\"")).unwrap_or_default();
    // An empty token: the node presents none (e.g. only `[dist.auth]`).
    let token_line = if token.is_empty() {
        String::new()
    } else {
        format!("builder_token = \"{token}\"\n")
    };
    std::fs::write(
        env.state().join("config.toml"),
        format!(
            "[node]\n{node_section}\n[network]\nlisten = [\"/ip4/{ip}/tcp/0\"]\nbootstrap = [{boot}]\nmdns = {mdns}\n\
             [office]\nname = \"acme\"\npublic_key = \"{pk}\"\n{token_line}{extra}"
        ),
    )
    .unwrap();
    env.start_node();
    // Keep the port it got, so that a restart comes back where peers look.
    eventually("the node listens", || view(&env)["listen"][0].is_string());
    let addr = view(&env)["listen"][0].as_str().unwrap().to_string();
    let cfg = std::fs::read_to_string(env.state().join("config.toml")).unwrap();
    std::fs::write(
        env.state().join("config.toml"),
        cfg.replace(&format!("/ip4/{ip}/tcp/0"), &addr),
    )
    .unwrap();
    (env, peer)
}

/// Every node's [`Env::diagnosis`], one after another.
pub fn diagnoses<'a>(envs: impl IntoIterator<Item = &'a Env>) -> String {
    envs.into_iter().map(Env::diagnosis).collect()
}

pub fn view(env: &Env) -> serde_json::Value {
    serde_json::from_str(&out(env.cmd(swarmcc()).args(["status", "--json"]))).unwrap()
}

pub fn members(env: &Env) -> Vec<String> {
    let mut m: Vec<String> = view(env)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["peer"].as_str().unwrap().to_string())
        .collect();
    m.sort();
    m
}

/// Wait (bounded) until `cond` holds; the bound only keeps a broken build from hanging.
pub fn eventually(what: &str, cond: impl FnMut() -> bool) {
    wait_for(what, std::time::Duration::from_secs(30), cond);
}

/// Wait until `cond` holds, at most `limit` (then fail, saying `what`).
pub fn wait_for(what: &str, limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("never happened within {limit:?}: {what}");
}

/// Wait until `c`'s node sees `builders` builders and a coordinator.
pub fn wait_office(c: &Env, builders: u64) {
    let what = format!("the office of {builders} builders formed");
    wait_for(&what, std::time::Duration::from_secs(60), || {
        let v = view(c);
        v["builders"] == builders && v["coordinator"].is_string()
    });
}

/// A one-function unit `a.c` in a new temporary directory, compiled once
/// through `env`'s wrapper (`gcc -c a.c -o a.o`, which must succeed).
pub fn compile_tiny(env: &Env) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.c"), "int a(void) { return 1; }\n").unwrap();
    run_ok(
        env.cmd(swarmcc())
            .current_dir(dir.path())
            .args(["gcc", "-c", "a.c", "-o", "a.o"]),
    );
    dir
}

/// Compile the units `sources` (in `dir`) all at once through `c`'s
/// wrapper with `compiler` and `flags`; each must succeed.
pub fn compile_at_once(c: &Env, dir: &Path, compiler: &str, flags: &[&str], sources: &[String]) {
    let kids: Vec<_> = sources
        .iter()
        .map(|src| {
            c.cmd(swarmcc())
                .arg(compiler)
                .args(flags)
                .args(["-c", src])
                .current_dir(dir)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
}

/// An office key pair made for a test ("acme").
pub struct Office {
    _dir: tempfile::TempDir,
    pub key: PathBuf,
    pub pk: String,
}

pub fn office() -> Office {
    let dir = tempfile::tempdir().unwrap();
    let pk = out(Command::new(swarmcc())
        .args(["office", "init", "--name", "acme", "--dir"])
        .arg(dir.path().join("office")));
    Office {
        key: dir.path().join("office/office.key"),
        _dir: dir,
        pk,
    }
}

/// A client token of the office for `user`, with extra CLI arguments.
pub fn client_token(o: &Office, user: &str, extra: &[&str]) -> String {
    out(Command::new(swarmcc())
        .args(["token", "client", "--user", user])
        .args(extra)
        .arg("--office-key")
        .arg(&o.key))
}

/// The bootstrap address of a node of a test office.
pub fn boot_of(n: &Env, peer: &str) -> String {
    format!("{}/p2p/{peer}", view(n)["listen"][0].as_str().unwrap())
}

/// The Lua project built once with plain gcc (its Makefile edited by
/// `edit`): its objects and dependency files are the reference, and the
/// tree is left clean for the next build.
pub fn lua_reference_with(
    dir: &Path,
    edit: impl Fn(&str) -> String,
) -> (PathBuf, Vec<(String, Vec<u8>)>) {
    let proj = make_lua_project(dir);
    let mf = std::fs::read_to_string(proj.join("Makefile")).unwrap();
    std::fs::write(proj.join("Makefile"), edit(&mf)).unwrap();
    run_ok(
        Command::new("make")
            .args(["-j2", "CC=gcc"])
            .current_dir(&proj),
    );
    let reference = objects(&proj);
    run_ok(Command::new("make").arg("clean").current_dir(&proj));
    (proj, reference)
}

/// [`lua_reference_with`] the Makefile as it is.
pub fn lua_reference(dir: &Path) -> (PathBuf, Vec<(String, Vec<u8>)>) {
    lua_reference_with(dir, str::to_string)
}

/// A unit that takes gcc a few seconds at -O2.
pub fn slow_unit(dir: &std::path::Path, name: &str) {
    // Distinct per file, so that no compile is answered by the cache.
    let mut src = format!(
        "int tag_{}(void) {{ return 0; }}\n",
        name.replace(['.', '-'], "_")
    );
    for i in 0..1500 {
        src.push_str(&format!(
            "double f{i}(double x) {{ double s = 0; for (int k = 0; k < {i} % 7 + 3; k++) s += x * k / (x + {i}.0); return s; }}\n"
        ));
    }
    std::fs::write(dir.join(name), src).unwrap();
}
