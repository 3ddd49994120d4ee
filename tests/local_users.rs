//! Other local users of a machine: what they cannot do to a node, its files
//! and its wrapper. Each test plays another user with a real uid (the
//! static `probe` program, or swarmcc itself, run under that uid).

mod common;
use common::*;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const OTHER: u32 = 4244;

fn files_below(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files_below(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

/// A C file compiled through the node, so that its sources, the job's tree
/// and the cache hold something of this developer's.
fn compile_something(env: &Env, dir: &Path) {
    std::fs::write(dir.join("secret.h"), "#define SECRET 4711\n").unwrap();
    std::fs::write(
        dir.join("a.c"),
        "#include \"secret.h\"\nint f(void) { return SECRET; }\n",
    )
    .unwrap();
    run_ok(
        env.cmd(swarmcc())
            .current_dir(dir)
            .args(["gcc", "-c", "a.c", "-o", "a.o"]),
    );
    let stats = env.stats_json();
    assert_eq!(dist_total(&stats), 1, "{stats}");
}

/// A root builder keeps other developers' sources, headers and objects:
/// another local account reads none of them, even knowing every path (the
/// sources are named by their content), and cannot talk to the node.
#[test]
fn another_local_user_reads_nothing_of_a_node_and_cannot_talk_to_it() {
    // The socket in a directory others may enter (as a configured socket
    // may be), so that only the node's own checks keep them out.
    let open_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = open_dir.path().join("node.sock");
    let mut env = Env::new(&format!(
        "[sandbox]\nuid_base = 3970000\n[node]\nsocket = {:?}\n",
        sock
    ));
    env.socket_at = Some(sock.clone());
    env.start_node();
    let work = tempfile::tempdir().unwrap();
    compile_something(&env, work.path());
    let probe = probe(work.path());
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut files = Vec::new();
    files_below(env.state(), &mut files);
    files_below(&env.sandbox_base(), &mut files);
    let sources = env.sandbox_base().join("sources");
    assert!(
        files.iter().any(|f| f.starts_with(&sources)),
        "the header was carried as a source blob: {files:?}"
    );
    assert!(files
        .iter()
        .any(|f| f.starts_with(env.state().join("cache"))));
    for chunk in files.chunks(200) {
        let mut args: Vec<&OsStr> = vec![OsStr::new("read")];
        args.extend(chunk.iter().map(|p| p.as_os_str()));
        assert_eq!(
            probe_as(&probe, OTHER, &args),
            "done\n",
            "readable by another user"
        );
    }

    // The socket: closed by its mode, and by the node itself should its
    // mode be opened (a socket configured elsewhere, a umask).
    let connect = || probe_as(&probe, OTHER, &[OsStr::new("connect"), sock.as_os_str()]);
    assert_eq!(connect(), "connect Permission denied\n");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(connect(), "connect ok, answer none\n");
    let refused = env.stats_json()["refused_requests"]["local connection of another user"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(refused, 1);
    // Its own user is still served.
    assert_eq!(
        probe_as(&probe, 0, &[OsStr::new("connect"), sock.as_os_str()]),
        "connect ok, answer yes\n"
    );
}

/// A state directory or a config another user made first (in a shared place
/// such as /tmp, where `SWARMCC_DIR` may point) is refused: its owner would
/// control the socket the wrapper talks to and the programs the node runs.
/// The node says why and does not start; the wrapper compiles locally.
#[test]
fn a_state_dir_or_config_another_user_made_first_is_refused() {
    require_tools();
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let planted = shared.path().join("swarmcc");
    std::fs::create_dir(&planted).unwrap();
    std::fs::write(
        planted.join("config.toml"),
        "[sandbox]\nbwrap = \"/tmp/evil\"\n",
    )
    .unwrap();
    chown_tree(&planted, OTHER);
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("a.c"), "int f(void) { return 1; }\n").unwrap();
    let with_dir = |dir: &Path| {
        let mut c = std::process::Command::new(swarmcc());
        c.env("SWARMCC_DIR", dir).env_remove("SWARMCC_CONFIG");
        c
    };

    let out = with_dir(&planted).args(["node"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("belongs to uid {OTHER}")), "{err}");
    // The wrapper compiles locally, and correctly.
    run_ok(
        with_dir(&planted)
            .current_dir(work.path())
            .args(["gcc", "-c", "a.c", "-o", "a.o"]),
    );
    run_ok(
        std::process::Command::new("gcc")
            .current_dir(work.path())
            .args(["-c", "a.c", "-o", "plain.o"]),
    );
    assert_eq!(
        std::fs::read(work.path().join("a.o")).unwrap(),
        std::fs::read(work.path().join("plain.o")).unwrap()
    );
    assert!(!planted.join("node.sock").exists());

    // A config anyone can write to is not trusted either.
    let mine = tempfile::tempdir().unwrap();
    let config = mine.path().join("config.toml");
    std::fs::write(&config, "[sandbox]\nbwrap = \"/tmp/evil\"\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = with_dir(mine.path()).arg("-s").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writable by other users"), "{err}");
    run_ok(
        with_dir(mine.path())
            .current_dir(work.path())
            .args(["gcc", "-c", "a.c", "-o", "b.o"]),
    );
    assert!(!mine.path().join("node.sock").exists());
}

/// Without `HOME` (a service without a login), an ordinary user's swarmcc
/// says so instead of keeping its state and looking for its config in /tmp,
/// where another user could have put them first.
#[test]
fn without_home_an_ordinary_user_is_told_so() {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(swarmcc())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .arg("-s")
        .uid(OTHER)
        .gid(OTHER)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HOME is not set"), "{err}");
}

/// A wrapper never talks to a node of another user (a socket configured in a
/// shared place, or a planted one): that node would get the sources and
/// answer with objects of its choice.
#[test]
fn a_wrapper_never_talks_to_another_users_node() {
    let open_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = open_dir.path().join("node.sock");
    let mut theirs = Env::new(&format!("[node]\nsocket = {sock:?}\n"));
    theirs.socket_at = Some(sock.clone());
    theirs.start_node_as(OTHER);
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cfg =
        swarmcc_node::config::Config::parse(&format!("[node]\nsocket = {sock:?}\n")).unwrap();
    let mine = tempfile::tempdir().unwrap();
    cfg.state = mine.path().to_path_buf();
    let e = swarmcc::client::NodeClient::connect(&cfg)
        .err()
        .expect("refused");
    assert!(
        format!("{e:#}").contains(&format!("served by uid {OTHER}")),
        "{e:#}"
    );
}
