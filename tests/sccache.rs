//! sccache-dist compatibility: the status endpoint and `--dist-status` in
//! sccache's shapes, metrics, the dashboard, and an unmodified sccache 0.19
//! client (installed by the README's test command) distributing a real C
//! code base into the swarm through its local node.

mod common;
use common::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use swarmcc_protocol::sccache::SchedulerStatusResult;

/// Every node of these tests serves HTTP on ports of its own.
const HTTP_ANY: &str = "[http]\nlisten = \"127.0.0.1:0\"\nsccache_listen = \"127.0.0.1:0\"\n\
                        client_auth = { type = \"token\", token = \"sesame\" }\n";

fn builder(o: &Office, name: &str, boot: Option<&str>, uid: u32) -> (Env, String) {
    office_node_with(
        &o.key,
        &o.pk,
        boot,
        None,
        &format!("max_jobs = 3\nname = \"{name}\""),
        &format!("[sandbox]\nuid_base = {uid}\n{HTTP_ANY}"),
    )
}

fn client(o: &Office, name: &str, boot: &str) -> (Env, String) {
    let token = client_token(o, name, &[]);
    office_node_with(
        &o.key,
        &o.pk,
        Some(boot),
        Some(token),
        &format!("builder = false\nname = \"{name}\""),
        HTTP_ANY,
    )
}

/// The node's HTTP address (host:port).
fn http_addr(n: &Env) -> String {
    eventually("the node serves HTTP", || view(n)["http"].is_string());
    let url = view(n)["http"].as_str().unwrap().to_string();
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// A plain HTTP/1.1 GET: (status, headers, body).
fn get(addr: &str, path: &str, accept: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    response(s)
}

/// Read a whole HTTP/1.1 response: (status, headers, body).
fn response(mut s: std::net::TcpStream) -> (u16, String, Vec<u8>) {
    let mut raw = Vec::new();
    // A server refusing an oversized body answers and closes early.
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

/// A plain HTTP/1.1 POST of a bincode body: (status, headers, body).
fn post(addr: &str, path: &str, token: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    post_as(addr, path, token, "application/octet-stream", body)
}

fn post_as(
    addr: &str,
    path: &str,
    token: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // A server refusing an oversized body answers and closes before reading it all.
    let _ = s.write_all(body);
    response(s)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
}

#[test]
fn status_metrics_dashboard_and_dist_status_speak_sccache() {
    let o = office();
    let (k, pk) = builder(&o, "k", None, 3_300_000);
    let boot = boot_of(&k, &pk);
    let (_b1, _) = builder(&o, "b1", Some(&boot), 3_301_000);
    let (c, _) = client(&o, "ann", &boot);
    eventually("the office is formed", || {
        let v = view(&c);
        v["builders"] == 2 && v["coordinator"].is_string()
    });
    let addr = http_addr(&c);

    // bincode by default: 24 bytes, sccache's SchedulerStatusResult.
    let (code, head, body) = get(&addr, "/api/v1/scheduler/status", None);
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("application/octet-stream"), "{head}");
    assert_eq!(body.len(), 24);
    let st: SchedulerStatusResult = swarmcc_protocol::sccache::decode(&body).unwrap();
    assert_eq!(
        st,
        SchedulerStatusResult {
            num_servers: 2,
            num_cpus: 6,
            in_progress: 0
        }
    );
    // JSON when asked, exactly sccache's shape.
    let (_, _, body) = get(&addr, "/api/v1/scheduler/status", Some("application/json"));
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"num_servers":2,"num_cpus":6,"in_progress":0}"#
    );
    // A builder answers with the same figures (every node keeps the reports).
    let (_, _, body) = get(
        &http_addr(&k),
        "/api/v1/scheduler/status",
        Some("application/json"),
    );
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"num_servers":2,"num_cpus":6,"in_progress":0}"#
    );

    // A request addressed to another name (a page that pointed its own name
    // at this address: DNS rebinding) gets nothing of the office.
    for path in [
        "/api/v1/scheduler/status",
        "/api/v1/office",
        "/metrics",
        "/",
    ] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: attacker.example:{}\r\nConnection: close\r\n\r\n",
            addr.rsplit(':').next().unwrap()
        )
        .unwrap();
        let (code, head, body) = response(s);
        assert_eq!(code, 421, "{path}: {head}");
        assert_eq!(body, b"unknown host\n");
    }
    assert!(c.stats_json()["refused_requests"]["HTTP request for another host"] == 4);

    // --dist-status: one line of sccache's DistInfo JSON.
    let line = out(c.cmd(swarmcc()).arg("--dist-status"));
    assert_eq!(
        line,
        format!(
            r#"{{"SchedulerStatus":["http://{addr}/",{{"num_servers":2,"num_cpus":6,"in_progress":0}}]}}"#
        )
    );
    assert_eq!(out(c.cmd(swarmcc()).arg("jobs")), "6");
    // A node with no office says so in the same shapes.
    let alone = Env::new("[http]\nenabled = false\n");
    assert_eq!(
        out(alone.cmd(swarmcc()).arg("--dist-status")),
        r#"{"Disabled":"no [office] configured"}"#
    );

    // A compile, then metrics count it.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("a.c"), "int a(void) { return 4; }\n").unwrap();
    run_ok(
        c.cmd(swarmcc())
            .args(["gcc", "-c", "a.c"])
            .current_dir(work.path()),
    );
    let (code, head, body) = get(&addr, "/metrics", None);
    assert_eq!(code, 200, "{head}");
    let text = String::from_utf8(body).unwrap();
    let dist: u64 = text
        .lines()
        .filter(|l| l.starts_with("swarmcc_dist_compiles_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(dist, 1, "{text}");
    assert!(text.contains("swarmcc_office_builders 2"), "{text}");
    assert!(text.contains("swarmcc_office_slots 6"), "{text}");
    assert!(text.contains("swarmcc_cache_misses_total 1"), "{text}");

    // alloc_job: sccache's client auth (its token, or an office client
    // token); a wrong one is a 401 with sccache's WWW-Authenticate code.
    use swarmcc_protocol::sccache::{encode, AllocJobHttpResponse, Toolchain};
    let tc = encode(&Toolchain {
        archive_id: swarmcc_protocol::sccache::archive_id(&swarmcc_protocol::Hash32::of(b"x")),
    });
    let (code, head, _) = post(&addr, "/api/v1/scheduler/alloc_job", "guess", &tc);
    assert_eq!(code, 401);
    assert!(
        head.contains("Bearer error=\"bearer_auth_failed\""),
        "{head}"
    );
    let office_token = client_token(&o, "carl", &[]);
    for token in ["sesame", office_token.as_str()] {
        let (code, _, body) = post(&addr, "/api/v1/scheduler/alloc_job", token, &tc);
        assert_eq!(code, 200);
        match swarmcc_protocol::sccache::decode::<AllocJobHttpResponse>(&body).unwrap() {
            AllocJobHttpResponse::Success {
                need_toolchain,
                job_alloc,
                ..
            } => {
                assert!(need_toolchain, "nobody holds this toolchain");
                assert_eq!(job_alloc.server_id.0.ip().to_string(), "127.0.0.1");
            }
            other => panic!("{other:?}"),
        }
    }
    // Malformed bodies: 400 with sccache's error JSON, and the node serves on.
    let alloc = "/api/v1/scheduler/alloc_job";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", tc.clone()),               // wrong content type
        ("application/octet-stream", tc[..5].to_vec()), // truncated
        ("application/octet-stream", vec![0xff; 8]),    // a length beyond the body
        ("application/octet-stream", {
            // not a blake3 archive id
            encode(&Toolchain {
                archive_id: "zz".into(),
            })
        }),
        ("application/octet-stream", vec![0u8; 5 << 20]), // oversized
    ];
    for (ct, body) in &cases {
        let (code, head, text) = post_as(&addr, alloc, "sesame", ct, body);
        if body.len() > 2 << 20 {
            assert_eq!(code, 413, "oversized: {head}");
            continue;
        }
        assert_eq!(code, 400, "{ct} {} bytes: {head}", body.len());
        let e: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert!(e["description"].is_string(), "{e}");
    }
    let (code, _, _) = get(&addr, "/api/v1/scheduler/status", None);
    assert_eq!(code, 200, "still serving after malformed requests");

    // An office without builders answers Fail (sccache compiles locally), not a 4xx.
    let (lonely, _) = office_node_with(
        &o.key,
        &o.pk,
        None,
        Some(office_token.clone()),
        "builder = false\nname = \"lonely\"",
        HTTP_ANY,
    );
    let (code, _, body) = post(
        &http_addr(&lonely),
        "/api/v1/scheduler/alloc_job",
        "sesame",
        &tc,
    );
    assert_eq!(code, 200);
    assert!(matches!(
        swarmcc_protocol::sccache::decode::<AllocJobHttpResponse>(&body).unwrap(),
        AllocJobHttpResponse::Fail { .. }
    ));

    // The dashboard page and the JSON it polls.
    let (code, _, body) = get(&addr, "/", None);
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("/api/v1/office"));
    let (_, _, body) = get(&addr, "/api/v1/office", None);
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["status"]["num_servers"], 2);
    let names: Vec<&str> = page["view"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"k") && names.contains(&"b1"), "{names:?}");
}

/// The sccache 0.19 client the test command installs.
fn sccache_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let bin = home.join("bin/sccache");
    let v = Command::new(&bin).arg("--version").output();
    assert!(
        v.as_ref()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("0.19.0")),
        "sccache 0.19.0 (dist-client) is required at {}: run the README's test command, which installs it",
        bin.display()
    );
    bin
}

/// An sccache client of its own (daemon port, cache, config) pointed at `node`.
struct Sccache {
    dir: tempfile::TempDir,
    port: u16,
}

impl Sccache {
    fn new(node: &Env) -> Sccache {
        let dir = tempfile::tempdir().unwrap();
        let addr = http_addr(node);
        std::fs::write(
            dir.path().join("config"),
            format!(
                "[dist]\nscheduler_url = \"http://{addr}\"\n\
                 [dist.auth]\ntype = \"token\"\ntoken = \"sesame\"\n"
            ),
        )
        .unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        Sccache { dir, port }
    }

    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("SCCACHE_CONF", self.dir.path().join("config"))
            .env("SCCACHE_DIR", self.dir.path().join("cache"))
            .env(
                "SCCACHE_DIST_CLIENT_CACHE_DIR",
                self.dir.path().join("dist"),
            )
            .env("SCCACHE_SERVER_PORT", self.port.to_string())
            .env("SCCACHE_ERROR_LOG", self.dir.path().join("error.log"))
            .env("SCCACHE_LOG", "info")
            .env("SCCACHE_IDLE_TIMEOUT", "0")
            .env("LANG", "C.UTF-8");
        c
    }

    fn stats(&self) -> serde_json::Value {
        let o = run_ok(
            self.cmd(sccache_bin())
                .args(["--show-stats", "--stats-format", "json"]),
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Sccache {
    fn drop(&mut self) {
        let _ = self.cmd(sccache_bin()).arg("--stop-server").output();
    }
}

/// The Lua project without `-g`: sccache sends the preprocessed text, and
/// gcc's line tables for a preprocessed input differ from a compile of the
/// source (swarmcc's own wrapper carries the sources and has no such
/// difference); the code and data must be identical.
fn lua_reference(dir: &Path) -> (PathBuf, Vec<(String, Vec<u8>)>) {
    lua_reference_with(dir, |mf| mf.replace("-O2 -g ", "-O2 "))
}

#[test]
fn an_unmodified_sccache_client_distributes_into_the_swarm() {
    let sccache = sccache_bin();
    let o = office();
    let (k, pk) = builder(&o, "k", None, 3_310_000);
    let boot = boot_of(&k, &pk);
    let (mut b1, _) = builder(&o, "b1", Some(&boot), 3_311_000);
    let (c1, _) = client(&o, "ann", &boot);
    let (c2, _) = client(&o, "bob", &boot);
    eventually("the office is formed", || {
        let v = view(&c2);
        v["builders"] == 2 && v["coordinator"].is_string() && view(&c1)["builders"] == 2
    });
    let s1 = Sccache::new(&c1);
    // sccache's own view of the office.
    let ds = out(s1.cmd(&sccache).arg("--dist-status"));
    let v: serde_json::Value = serde_json::from_str(&ds).unwrap();
    assert_eq!(
        v["SchedulerStatus"][1],
        serde_json::json!({"num_servers": 2, "num_cpus": 6, "in_progress": 0}),
        "{ds}\n{}",
        s1.log()
    );

    let work = tempfile::tempdir().unwrap();
    let (proj, reference) = lua_reference(work.path());
    let cc = format!("CC={} gcc", sccache.display());
    let build = run_ok(s1.cmd("make").args(["-j4", &cc]).current_dir(&proj));
    let _ = build;
    let st = s1.stats();
    let why = || diagnoses([&c1, &k, &b1]);
    assert_eq!(
        dist_total(&st["stats"]),
        33,
        "{st}\n{}\n{}",
        s1.log(),
        why()
    );
    assert_eq!(
        st["stats"]["dist_errors"],
        0,
        "{st}\n{}\n{}",
        s1.log(),
        why()
    );
    let through = objects(&proj);
    assert_eq!(through.len(), reference.len());
    for ((n, a), (_, b)) in reference.iter().zip(&through) {
        assert!(a == b, "{n} differs from the local build");
    }
    let text = String::from_utf8(run_ok(s1.cmd(&sccache).arg("--show-stats")).stdout).unwrap();
    assert!(text.contains("Successful distributed compiles"), "{text}");
    // The swarm ran them: the client node relayed, builders compiled.
    let n1 = c1.stats_json();
    // Jobs allocated before the first upload finished upload too (as with
    // sccache-dist), at most one per parallel job.
    let uploads = n1["sccache_toolchain_uploads"].as_u64().unwrap();
    assert!((1..=4).contains(&uploads), "{n1}");
    let relayed: u64 = n1["sccache_jobs"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(relayed, 33, "{n1}");

    // A second client with the same compiler: the swarm has the toolchain,
    // so it is never uploaded again; a builder dies mid-build and the build
    // still succeeds.
    let s2 = Sccache::new(&c2);
    run_ok(Command::new("make").arg("clean").current_dir(&proj));
    let mut make = s2
        .cmd("make")
        .args(["-j4", &cc])
        .current_dir(&proj)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("b1 runs a job for the second client", || {
        view(&b1)["running_jobs"].as_u64().unwrap_or(0) > 0
    });
    b1.kill_node();
    let status = make.wait().unwrap();
    let mut err = String::new();
    make.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}\n{}", s2.log());
    let through = objects(&proj);
    for ((n, a), (_, b)) in reference.iter().zip(&through) {
        assert!(a == b, "{n} differs from the local build (second client)");
    }
    let n2 = c2.stats_json();
    assert_eq!(
        n2["sccache_toolchain_uploads"], 0,
        "never uploaded again: {n2}"
    );
    let st2 = s2.stats();
    println!(
        "second client: {} distributed, {} fell back after a builder was killed",
        dist_total(&st2["stats"]),
        st2["stats"]["dist_errors"]
    );
    assert!(dist_total(&st2["stats"]) > 0, "{st2}");
}

#[test]
fn the_dashboard_renders_real_nodes_in_headless_chromium() {
    let chromium = Path::new("/usr/bin/chromium");
    assert!(
        chromium.exists(),
        "chromium is required: run the README's test command, which installs it"
    );
    let o = office();
    let (k, pk) = builder(&o, "alpha-builder", None, 3_320_000);
    let boot = boot_of(&k, &pk);
    let (_b, _) = builder(&o, "beta-builder", Some(&boot), 3_321_000);
    eventually("two builders", || view(&k)["builders"] == 2);
    let url = format!("http://{}/", http_addr(&k));
    let profile = tempfile::tempdir().unwrap();
    let shot = profile.path().join("dashboard.png");
    let browser = |extra: &[&str]| {
        let mut c = Command::new(chromium);
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,700",
            "--virtual-time-budget=4000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("p").display()
        ))
        .args(extra)
        .arg(&url);
        c
    };
    // The page as the browser rendered it, after its script ran.
    let dom = String::from_utf8(run_ok(&mut browser(&["--dump-dom"])).stdout).unwrap();
    for want in ["alpha-builder", "beta-builder", "“acme”"] {
        assert!(dom.contains(want), "{want} not on the page:\n{dom}");
    }
    // The cards show the office's figures: 2 builders, 6 slots.
    assert!(dom.contains(r#"<b id="builders">2</b>"#), "{dom}");
    assert!(dom.contains(r#"<b id="slots">6</b>"#), "{dom}");
    // And a screenshot of it, kept next to the test's output for a look.
    run_ok(&mut browser(&[&format!("--screenshot={}", shot.display())]));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(png.len() > 10_000, "a blank page? {} bytes", png.len());
    let keep = std::env::temp_dir().join("swarmcc-dashboard.png");
    let _ = std::fs::write(&keep, &png);
    println!("dashboard screenshot: {}", keep.display());
}

/// A second node on a machine whose HTTP ports another process holds
/// keeps its whole HTTP side, on ephemeral ports of the same address.
#[test]
fn taken_http_ports_move_to_ephemeral_ones_and_the_node_still_answers() {
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (p, t) = (
        plain.local_addr().unwrap().port(),
        tls.local_addr().unwrap().port(),
    );
    let mut n = Env::new(&format!(
        "[http]\nlisten = \"127.0.0.1:{p}\"\nsccache_listen = \"127.0.0.1:{t}\"\n"
    ));
    n.start_node();
    let addr = http_addr(&n);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_ne!(addr, format!("127.0.0.1:{p}"));
    let (code, _, body) = get(&addr, "/api/v1/scheduler/status", Some("application/json"));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let log = n.node_log();
    assert!(log.contains(&format!("127.0.0.1:{p} is taken")), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{t} is taken")), "{log}");
}

/// The `cc` crate compiles each C file of a `-sys` crate from the
/// package's directory with its object under `target/`, far from the cwd;
/// other builds put objects in a directory above the cwd, or read headers
/// from beside it. An sccache client sends such command lines as they are,
/// and the builders write and read where they name (as sccache-dist's do).
#[test]
fn sccache_clients_with_objects_outside_the_cwd_are_distributed() {
    let sccache = sccache_bin();
    let o = office();
    let (k, pk) = builder(&o, "k", None, 3_320_000);
    let boot = boot_of(&k, &pk);
    let (c, _) = client(&o, "cc-crate", &boot);
    eventually("the office is formed", || {
        view(&c)["builders"] == 1 && view(&c)["coordinator"].is_string()
    });
    let s = Sccache::new(&c);
    let work = tempfile::tempdir().unwrap();
    let pkg = work.path().join("registry/foo-sys-0.1.0");
    let include = work.path().join("registry/include");
    let out = work.path().join("target/debug/build/foo-sys-1a2b/out");
    for d in [&pkg.join("src/sub"), &include, &out] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(include.join("foo.h"), "#define FOO(x) ((x) * 3)\n").unwrap();
    // (source in the cwd, object path, cwd below the package)
    let mut units = Vec::new();
    for i in 0..6 {
        let src = format!("src/f{i}.c");
        std::fs::write(
            pkg.join(&src),
            format!("#include <foo.h>\nint f{i}(int x) {{ return FOO(x) + {i}; }}\n"),
        )
        .unwrap();
        units.push((pkg.clone(), src, out.join(format!("f{i}.o"))));
    }
    // The object in a directory above the cwd (the cwd inside what is
    // written), and one at the top of the package.
    std::fs::write(pkg.join("src/sub/g.c"), "int g(void) { return 7; }\n").unwrap();
    std::fs::write(pkg.join("src/sub/h.c"), "int h(void) { return 8; }\n").unwrap();
    units.push((pkg.join("src/sub"), "g.c".into(), pkg.join("src/g.o")));
    units.push((pkg.join("src/sub"), "h.c".into(), pkg.join("h.o")));
    let flags = [
        "-O2",
        "-ffunction-sections",
        "-fdata-sections",
        "-fPIC",
        "-Wall",
    ];
    let inc = format!("-I{}", include.display());
    let compile = |cmd: &mut Command, cwd: &Path, src: &str, obj: &Path| {
        run_ok(
            cmd.args(flags)
                .arg(&inc)
                .args(["-c", src, "-o"])
                .arg(obj)
                .current_dir(cwd),
        );
        std::fs::read(obj).unwrap()
    };
    let mut plain = Vec::new();
    for (cwd, src, obj) in &units {
        plain.push(compile(&mut Command::new("gcc"), cwd, src, obj));
        std::fs::remove_file(obj).unwrap();
    }
    for ((cwd, src, obj), want) in units.iter().zip(&plain) {
        let got = compile(s.cmd(&sccache).arg("gcc"), cwd, src, obj);
        assert!(got == *want, "{} differs from gcc's own", obj.display());
    }
    let st = s.stats();
    let why = || diagnoses([&c, &k]);
    assert_eq!(
        st["stats"]["dist_errors"],
        0,
        "{st}\n{}\n{}",
        s.log(),
        why()
    );
    assert_eq!(
        dist_total(&st["stats"]),
        units.len() as u64,
        "{st}\n{}\n{}",
        s.log(),
        why()
    );
    // Nothing was written anywhere else in the client's tree.
    let mut files = Vec::new();
    let mut todo = vec![work.path().to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                files.push(e.path().strip_prefix(work.path()).unwrap().to_owned());
            }
        }
    }
    assert_eq!(files.len(), 6 + 6 + 3 + 2, "{files:?}");
}
