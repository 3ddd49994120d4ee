//! Hostile jobs: a custom toolchain whose "compiler" (bash) misbehaves. Each
//! job must fail cleanly, leave nothing behind, and the node must keep serving.

mod common;
use common::*;
use std::os::unix::net::UnixStream;
use std::path::Path;
use swarmcc_protocol::frame::{read_frame, write_frame, LOCAL_FRAME_MAX};
use swarmcc_protocol::local::{Request, Response, ToolchainSpec};
use swarmcc_protocol::{Job, ToolchainId};

const UID_BASE: u32 = 3_950_000;
/// For the test that runs alongside (its sandboxes are not the other's).
const OTHER_UID_BASE: u32 = UID_BASE + 1000;

fn call(env: &Env, req: &Request) -> Response {
    let mut s = UnixStream::connect(env.socket()).unwrap();
    write_frame(&mut s, req, LOCAL_FRAME_MAX).unwrap();
    read_frame(&mut s, LOCAL_FRAME_MAX).unwrap()
}

/// bash and what it needs, packaged as a toolchain archive.
fn bash_archive(env: &Env) -> std::path::PathBuf {
    let archive = env.state().join("bash.tar.zst");
    run_ok(
        env.cmd(swarmcc())
            .args(["package-toolchain", "bash"])
            .arg(&archive),
    );
    archive
}

/// Give the node a toolchain archive with its compiler's path inside.
fn register(env: &Env, archive: &Path, compiler: &str) -> ToolchainId {
    match call(
        env,
        &Request::Toolchain(ToolchainSpec::Archive {
            archive: archive.to_string_lossy().into_owned(),
            compiler: compiler.into(),
        }),
    ) {
        Response::Toolchain(info) => info.id,
        other => panic!("toolchain: {other:?}"),
    }
}

fn bash_toolchain(env: &Env) -> ToolchainId {
    register(env, &bash_archive(env), "/usr/bin/bash")
}

fn job(tc: ToolchainId, script: &str) -> Job {
    Job {
        toolchain: tc,
        compiler: "/usr/bin/bash".into(),
        cwd: "/home/user/proj".into(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        sources: vec![],
        check: None,
        deps_file: None,
        args: vec!["-c".into(), script.into()],
        outputs: vec!["/home/user/proj/out.o".into()],
    }
}

fn run_job(env: &Env, tc: ToolchainId, script: &str) -> Response {
    call(
        env,
        &Request::Compile {
            key: None,
            job: Box::new(job(tc, script)),
            blobs: vec![],
        },
    )
}

fn assert_clean(env: &Env, uid_base: u32) {
    // Nothing a job wrote and no sandbox process survives it (the node
    // cleans up in the background, right after answering). Each slot keeps
    // only its read-only tree (links) and its writable directory, empty.
    let jobs = || -> Vec<_> {
        let mut left = Vec::new();
        for e in std::fs::read_dir(env.sandbox_base().join("jobs"))
            .unwrap()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("tree-") {
                continue;
            }
            // A slot's writable directories (`work-N`, and `work-N.M` for
            // outputs elsewhere) are kept, empty.
            let kept = name.strip_prefix("work-").is_some_and(|r| {
                r.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            });
            if kept {
                left.extend(
                    std::fs::read_dir(e.path())
                        .unwrap()
                        .flatten()
                        .map(|e| e.path()),
                );
                continue;
            }
            left.push(e.path());
        }
        left
    };
    let mut left = (jobs(), sandbox_processes(uid_base));
    for _ in 0..50 {
        if left.0.is_empty() && left.1.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = (jobs(), sandbox_processes(uid_base));
    }
    assert!(
        left.0.is_empty(),
        "job directories left behind: {:?}",
        left.0
    );
    assert!(
        left.1.is_empty(),
        "sandbox processes left behind: {:?}",
        left.1
    );
    assert!(
        matches!(call(env, &Request::Stats), Response::Stats(_)),
        "node stopped serving"
    );
}

/// Run a job that the sandbox must stop, with `why` in the error.
fn expect_error(env: &Env, tc: ToolchainId, script: &str, why: &str) {
    match run_job(env, tc, script) {
        Response::Error(e) => assert!(e.contains(why), "{script}: {e}"),
        other => panic!("{script}: {other:?}"),
    }
    assert_clean(env, UID_BASE);
}

fn stdout_of(r: &Response) -> String {
    match r {
        Response::Compiled { result, .. } => String::from_utf8_lossy(&result.stdout).into_owned(),
        _ => String::new(),
    }
}

fn failed(r: &Response) -> bool {
    match r {
        Response::Compiled { result, .. } => result.exit_code != 0,
        Response::Error(_) => true,
        _ => false,
    }
}

#[test]
fn hostile_jobs_fail_cleanly_and_the_node_keeps_serving() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the sandbox tests need root (per-job uids); run them as the README says"
    );
    let mut env = Env::new(&format!(
        "[sandbox]\ntimeout_secs = 4\nmemory_limit = \"256M\"\noutput_limit = \"1M\"\nmax_processes = 8\nuid_base = {UID_BASE}\n"
    ));
    env.start_node();
    let tc = bash_toolchain(&env);

    // A well-behaved job works and returns its output file.
    match run_job(&env, tc, "echo hello; echo object > out.o") {
        Response::Compiled { result, .. } => {
            assert_eq!(result.exit_code, 0);
            assert_eq!(String::from_utf8_lossy(&result.stdout), "hello\n");
            assert_eq!(
                result.outputs,
                vec![("/home/user/proj/out.o".to_string(), b"object\n".to_vec())]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_clean(&env, UID_BASE);

    // Many short jobs in a row on the same slot uid, each forking, stay
    // within the 8-process limit: nothing of a finished job (such as
    // bubblewrap's init, which the host's init may reap only seconds later)
    // is still counted against the next one.
    for i in 0..40 {
        match run_job(&env, tc, "(:) & (:) & wait; echo ok") {
            // (bash retries a failed fork after a pause, saying so on stderr)
            Response::Compiled { result, .. } => assert_eq!(
                (
                    result.exit_code,
                    String::from_utf8_lossy(&result.stdout).into_owned(),
                    String::from_utf8_lossy(&result.stderr).into_owned()
                ),
                (0, "ok\n".to_string(), String::new()),
                "job {i}"
            ),
            other => panic!("job {i}: {other:?}"),
        }
    }
    assert_clean(&env, UID_BASE);

    // Opens a TCP connection to a listener on the host's loopback.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = run_job(
        &env,
        tc,
        &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo CONNECTED"),
    );
    assert!(failed(&r) && !stdout_of(&r).contains("CONNECTED"), "{r:?}");
    assert!(listener.accept().is_err(), "a connection reached the host");
    assert_clean(&env, UID_BASE);
    // Its network namespace has a loopback interface and nothing else.
    let r = run_job(
        &env,
        tc,
        "while read -r name rest; do case $name in *:) echo ${name%:};; esac; done < /proc/net/dev",
    );
    assert_eq!(stdout_of(&r), "lo\n", "{r:?}");

    // Sees no network interface but an unconfigured loopback.
    let r = run_job(
        &env,
        tc,
        "for f in /proc/net/dev /proc/net/route; do while IFS= read -r l; do echo \"$l\"; done < $f; done",
    );
    let seen = stdout_of(&r);
    let interfaces: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .filter(|name| !name.contains('|'))
        .collect();
    assert_eq!(interfaces, ["lo"], "{seen}");
    assert!(seen.lines().filter(|l| l.starts_with("Iface")).count() <= 1);
    assert!(
        !seen
            .lines()
            .any(|l| l.starts_with("lo\t") || l.contains("eth")),
        "a route: {seen}"
    );
    assert_clean(&env, UID_BASE);

    // Reads a host file.
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "TOPSECRET-4711\n").unwrap();
    let r = run_job(
        &env,
        tc,
        &format!(
            "read -r l < {} ; echo \"$l\"; read -r p < /etc/passwd; echo \"$p\"",
            secret.display()
        ),
    );
    assert!(
        !stdout_of(&r).contains("TOPSECRET") && !stdout_of(&r).contains("root:"),
        "{r:?}"
    );
    assert_clean(&env, UID_BASE);

    // Writes outside its directory: host paths, the toolchain, /tmp.
    let outside = secret_dir.path().join("pwned");
    let r = run_job(
        &env,
        tc,
        &format!(
            "echo x > {}; echo x > /usr/bin/evil; echo x > /tmp/swarmcc-hostile-marker; true",
            outside.display()
        ),
    );
    assert!(matches!(r, Response::Compiled { .. }), "{r:?}");
    assert!(!outside.exists(), "wrote to a host directory");
    assert!(
        !Path::new("/tmp/swarmcc-hostile-marker").exists(),
        "wrote to the host's /tmp"
    );
    let roots = env.sandbox_base().join("roots");
    for root in std::fs::read_dir(&roots).unwrap().flatten() {
        assert!(
            !root.path().join("usr/bin/evil").exists(),
            "wrote into the toolchain"
        );
    }
    assert_clean(&env, UID_BASE);

    // Forks without end. Every level waits for its children, so the tree
    // only grows: the job cannot end well before a fork fails (the
    // `f & f &` form without a wait could finish before the limit was
    // reached, its orphans then killed with the sandbox: a flaky test).
    // Contained either way: the per-job process limit makes forks fail
    // (bash reports it) or the time limit kills the job.
    let r = run_job(&env, tc, "f() { f & f & wait; }; f");
    let stderr = match &r {
        Response::Compiled { result, .. } => String::from_utf8_lossy(&result.stderr).into_owned(),
        _ => String::new(),
    };
    assert!(
        failed(&r) || stderr.contains("Resource temporarily unavailable"),
        "{r:?}"
    );
    assert_clean(&env, UID_BASE);

    // Runs forever.
    expect_error(&env, tc, "while :; do :; done", "time limit");

    // Writes a huge stdout, then a huge file.
    expect_error(
        &env,
        tc,
        "while :; do echo aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; done",
        "output limit",
    );
    expect_error(
        &env,
        tc,
        "while :; do echo aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; done > out.o",
        "signal",
    );

    // Allocates without end.
    let r = run_job(&env, tc, "x=a; while :; do x=$x$x; done");
    assert!(failed(&r), "{r:?}");
    assert_clean(&env, UID_BASE);

    // Malformed and oversized frames close that connection only.
    {
        use std::io::{Read, Write};
        let mut s = UnixStream::connect(env.socket()).unwrap();
        s.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            s.read(&mut buf).unwrap_or(0),
            0,
            "connection closed on a bad frame"
        );
        let mut s = UnixStream::connect(env.socket()).unwrap();
        s.write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert_eq!(
            s.read(&mut buf).unwrap_or(0),
            0,
            "connection closed on an oversized frame"
        );
    }

    // A job that would write where no job may is refused before running.
    let refused = |bad: Job| {
        let r = call(
            &env,
            &Request::Compile {
                key: None,
                job: Box::new(bad),
                blobs: vec![],
            },
        );
        assert!(
            matches!(&r, Response::Error(e) if e.contains("invalid job")),
            "{r:?}"
        );
    };
    for out in ["/a.o", "/proc/self/x.o", "/dev/null"] {
        let mut bad = job(tc, "true");
        bad.outputs = vec![out.into()];
        refused(bad);
    }
    // A dependency file the node would read from outside the job's
    // directories; an output named twice (read twice into memory).
    let mut bad = job(tc, "true");
    bad.deps_file = Some("/home/user/proj/../../../etc/shadow".into());
    refused(bad);
    let mut bad = job(tc, "true");
    bad.outputs = vec!["/home/user/proj/out.o".into(); 2];
    refused(bad);
    // An output outside the cwd (as sccache clients send) is written in a
    // directory of the slot's bound there: the host's file is untouched.
    let shadow = std::fs::read("/etc/shadow").unwrap();
    let mut far = job(tc, "echo owned > /etc/shadow; echo also > /etc/passwd");
    far.outputs = vec!["/etc/shadow".into()];
    match call(
        &env,
        &Request::Compile {
            key: None,
            job: Box::new(far),
            blobs: vec![],
        },
    ) {
        Response::Compiled { result, .. } => {
            assert_eq!(
                result.outputs,
                [("/etc/shadow".into(), b"owned\n".to_vec())]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read("/etc/shadow").unwrap(), shadow);
    assert!(!std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .contains("also"));
    let mut bad = job(tc, "true");
    bad.cwd = "/home/../etc".into();
    refused(bad);

    // After all that, still serving real work, and the node never crashed.
    match run_job(&env, tc, "echo fine") {
        Response::Compiled { result, .. } => assert_eq!(result.exit_code, 0),
        other => panic!("{other:?}"),
    }
    assert!(
        env.node.as_mut().unwrap().try_wait().unwrap().is_none(),
        "node exited"
    );
    assert_clean(&env, UID_BASE);
    let stats = env.stats_json();
    assert!(
        stats["sandbox_limit_hits"].as_u64().unwrap() >= 3,
        "{stats}"
    );
}

/// A slot keeps its read-only tree of carried files from job to job (changing
/// only what differs), so a job must see exactly its own carried files:
/// nothing an earlier job in the same slot carried.
#[test]
fn a_job_sees_no_file_an_earlier_job_carried() {
    use swarmcc_protocol::job::{Blob, SourceRef};
    use swarmcc_protocol::Hash32;
    let mut env = Env::new(&format!(
        "[node]\nmax_jobs = 1\n[sandbox]\nuid_base = {OTHER_UID_BASE}\n"
    ));
    env.start_node();
    let tc = bash_toolchain(&env);
    let carrying = |files: &[(&str, &[u8])], script: &str| {
        let mut j = job(tc, script);
        let mut blobs = Vec::new();
        for (path, data) in files {
            let hash = Hash32::of(data);
            j.sources.push(SourceRef {
                path: path.to_string(),
                hash,
            });
            blobs.push(Blob {
                hash,
                data: data.to_vec(),
            });
        }
        call(
            &env,
            &Request::Compile {
                key: None,
                job: Box::new(j),
                blobs,
            },
        )
    };
    // (bash builtins only: the toolchain is bash alone)
    let show = "for f in /srv/inc/a.h /srv/inc/secret/b.h /opt/x.h; do \
                [ -e $f ] && echo \"$f: $(< $f)\"; done; echo /srv/inc/*";
    let first = carrying(
        &[
            ("/srv/inc/a.h", b"first a"),
            ("/srv/inc/secret/b.h", b"first b"),
        ],
        show,
    );
    assert_eq!(
        stdout_of(&first),
        "/srv/inc/a.h: first a\n/srv/inc/secret/b.h: first b\n/srv/inc/a.h /srv/inc/secret\n",
        "{first:?}"
    );
    // Same slot: a.h with other content, b.h not carried, another file added.
    let second = carrying(&[("/srv/inc/a.h", b"second a"), ("/opt/x.h", b"x")], show);
    assert_eq!(
        stdout_of(&second),
        "/srv/inc/a.h: second a\n/opt/x.h: x\n/srv/inc/a.h\n",
        "{second:?}"
    );
    // Nothing carried: none of them.
    let third = carrying(&[], "echo /srv/* /opt/*");
    assert_eq!(stdout_of(&third), "/srv/* /opt/*\n", "{third:?}");
    // Nor anything an earlier job wrote in its working directory.
    let writer = carrying(
        &[("/home/user/proj/src/in.c", b"int x;")],
        "echo left > top && echo left > src/new && echo left > .hidden && echo wrote",
    );
    assert_eq!(stdout_of(&writer), "wrote\n", "{writer:?}");
    let reader = carrying(
        &[],
        "shopt -s dotglob nullglob; f=(*); echo \"${#f[@]}:${f[*]}\"",
    );
    assert_eq!(stdout_of(&reader), "0:\n", "{reader:?}");
    assert_clean(&env, OTHER_UID_BASE);
}

/// A toolchain whose compiler, `/usr/bin/fake-gcc`, reads its arguments
/// from an `@file` as gcc does (so the node gives them that way, and sets
/// each slot's next sandbox up ahead) and hands them to bash.
fn fake_gcc_toolchain(env: &Env) -> ToolchainId {
    let bash = bash_archive(env);
    let root = tempfile::tempdir().unwrap();
    let raw = zstd::decode_all(std::fs::File::open(&bash).unwrap()).unwrap();
    tar::Archive::new(&raw[..]).unpack(root.path()).unwrap();
    let gcc = root.path().join("usr/bin/fake-gcc");
    // (`read` without -r undoes the backslashes the node puts in)
    std::fs::write(
        &gcc,
        "#!/usr/bin/bash\n\
         case \"$1\" in @*) a=(); while IFS= read l; do a+=(\"$l\"); done < \"${1#@}\"; set -- \"${a[@]}\";; esac\n\
         exec /usr/bin/bash \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&gcc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", root.path()).unwrap();
    let archive = env.state().join("fake-gcc.tar.zst");
    std::fs::write(
        &archive,
        zstd::encode_all(&tar.into_inner().unwrap()[..], 3).unwrap(),
    )
    .unwrap();
    register(env, &archive, "/usr/bin/fake-gcc")
}

#[test]
fn a_sandbox_set_up_ahead_shows_each_job_its_own_files() {
    use swarmcc_protocol::job::{Blob, SourceRef};
    use swarmcc_protocol::Hash32;
    let mut env = Env::new(&format!(
        "[node]\nmax_jobs = 1\n[sandbox]\nuid_base = {}\n",
        UID_BASE + 2000
    ));
    env.start_node();
    let tc = fake_gcc_toolchain(&env);
    let ahead = || env.stats_json()["sandboxes_set_up_ahead"].as_u64().unwrap();
    let run = |cwd: &str, files: &[(&str, &str)], script: &str| {
        let mut j = job(tc, script);
        j.compiler = "/usr/bin/fake-gcc".into();
        j.cwd = cwd.into();
        j.outputs = vec![format!("{cwd}/out.o")];
        let mut blobs = Vec::new();
        for (path, data) in files {
            let hash = Hash32::of(data.as_bytes());
            j.sources.push(SourceRef {
                path: path.to_string(),
                hash,
            });
            blobs.push(Blob {
                hash,
                data: data.as_bytes().to_vec(),
            });
        }
        let r = call(
            &env,
            &Request::Compile {
                key: None,
                job: Box::new(j),
                blobs,
            },
        );
        stdout_of(&r)
    };
    let show =
        "for f in /srv/a.h /tmp/t.h; do [ -e $f ] && echo \"$(< $f)\"; done; echo 'quoted arg'";
    let p = "/home/user/proj";
    assert_eq!(run(p, &[("/srv/a.h", "1")], show), "1\nquoted arg\n");
    assert_eq!(ahead(), 0);
    // The same sandbox, set up while the node waited: it shows the new file.
    assert_eq!(run(p, &[("/srv/a.h", "2")], show), "2\nquoted arg\n");
    assert_eq!(ahead(), 1);
    // Still there once the runtime's idle blocking threads have ended (after
    // 10 s): a sandbox dies with the thread that started it.
    std::thread::sleep(std::time::Duration::from_secs(11));
    assert_eq!(run(p, &[("/srv/a.h", "2b")], show), "2b\nquoted arg\n");
    assert_eq!(ahead(), 2);
    // A file under /tmp is bound on its own: another sandbox.
    assert_eq!(
        run(p, &[("/srv/a.h", "3"), ("/tmp/t.h", "t3")], show),
        "3\nt3\nquoted arg\n"
    );
    assert_eq!(ahead(), 2);
    // Same mounts, but the file bound on its own changed: the sandbox set
    // up ahead would show the old one, so it is not used.
    assert_eq!(
        run(p, &[("/srv/a.h", "4"), ("/tmp/t.h", "t4")], show),
        "4\nt4\nquoted arg\n"
    );
    assert_eq!(ahead(), 2);
    assert_eq!(
        run(p, &[("/srv/a.h", "4"), ("/tmp/t.h", "t4")], show),
        "4\nt4\nquoted arg\n"
    );
    assert_eq!(ahead(), 3);
    // Another cwd: another sandbox.
    assert_eq!(
        run("/work/other", &[("/srv/a.h", "5")], "pwd"),
        "/work/other\n"
    );
    assert_eq!(ahead(), 3);
    // What a job leaves in its directory is gone for the next, which uses
    // the sandbox set up ahead.
    assert_eq!(
        run("/work/other", &[], "echo left > top; echo wrote"),
        "wrote\n"
    );
    assert_eq!(ahead(), 4);
    assert_eq!(
        run(
            "/work/other",
            &[],
            "shopt -s dotglob nullglob; f=(*); echo \"${#f[@]}\""
        ),
        "0\n"
    );
    assert_eq!(ahead(), 5);
    // The slot's next sandbox waits, blocked before exec: gone with the node.
    assert!(!sandbox_processes(UID_BASE + 2000).is_empty());
    env.kill_node();
    let mut left = sandbox_processes(UID_BASE + 2000);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = sandbox_processes(UID_BASE + 2000);
    }
    assert!(left.is_empty(), "sandboxes outlived the node: {left:?}");
}

/// The probe program (tests/common/probe.c) packaged as a toolchain of its
/// own: the "compiler" of the jobs below. The archive is left readable for
/// a node of another user.
fn probe_toolchain(env: &Env) -> (ToolchainId, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = env.state().join("probe-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let probe = probe(&dir);
    let archive = dir.join("probe.tar.zst");
    run_ok(
        env.cmd(swarmcc())
            .args(["package-toolchain"])
            .arg(&probe)
            .arg(&archive),
    );
    for p in [&dir, &archive] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let compiler = probe.to_string_lossy().into_owned();
    (register(env, &archive, &compiler), compiler)
}

fn probe_job(env: &Env, tc: ToolchainId, compiler: &str, args: &[&str]) -> String {
    let mut j = job(tc, "");
    j.compiler = compiler.into();
    j.args = args.iter().map(|a| a.to_string()).collect();
    let r = call(
        env,
        &Request::Compile {
            key: None,
            job: Box::new(j),
            blobs: vec![],
        },
    );
    match r {
        Response::Compiled { result, .. } if result.exit_code == 0 => {
            String::from_utf8(result.stdout).unwrap()
        }
        other => panic!("{args:?}: {other:?}"),
    }
}

/// What a job gets of the kernel: no user or network namespace of its own
/// (where it would hold capabilities again), no mount, no vsock (which a
/// network namespace does not hold back), and none of the calls a compiler
/// never needs (keyrings, BPF, ptrace, io_uring), while ordinary calls work.
fn assert_calls_contained(seen: &str) {
    let eperm = "Operation not permitted";
    let enosys = "Function not implemented";
    let want = [
        ("unshare-user", eperm),
        ("unshare-net", eperm),
        ("clone-newuser", eperm),
        ("keyctl", eperm),
        ("bpf", eperm),
        ("ptrace", eperm),
        ("io_uring", eperm),
        ("mount", eperm),
        ("vsock", eperm),
        ("x32", enosys),
        ("clone3", enosys),
        ("getpid", "ok"),
    ];
    let got: Vec<(&str, &str)> = seen.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(got, want, "{seen}");
}

#[test]
fn a_job_gets_no_namespace_and_no_kernel_call_it_has_no_use_for() {
    let mut env = Env::new(&format!(
        "[sandbox]\ntimeout_secs = 20\nuid_base = {}\n",
        UID_BASE + 2000
    ));
    env.start_node();
    let (tc, probe) = probe_toolchain(&env);
    assert_calls_contained(&probe_job(&env, tc, &probe, &["calls"]));
    assert_clean(&env, UID_BASE + 2000);
}

/// A job of a root node (which has a memory cgroup per slot here) is
/// bounded in its processes' memory together, not only each process's:
/// four processes of 200 MB each, under a limit of 256 MB, do not all live.
#[test]
fn a_jobs_processes_together_stay_within_the_memory_limit() {
    let mut env = Env::new(&format!(
        "[sandbox]\ntimeout_secs = 30\nmemory_limit = \"256M\"\nuid_base = {}\n",
        UID_BASE + 3000
    ));
    env.start_node();
    let (tc, probe) = probe_toolchain(&env);
    // One process of 200 MB is fine.
    assert_eq!(
        probe_job(&env, tc, &probe, &["mem", "1", "200"]),
        "lived 1 of 1\n"
    );
    let mut j = job(tc, "");
    j.compiler = probe;
    j.args = ["mem", "4", "200"].map(String::from).to_vec();
    let r = call(
        &env,
        &Request::Compile {
            key: None,
            job: Box::new(j),
            blobs: vec![],
        },
    );
    let lived = match &r {
        Response::Compiled { result, .. } => String::from_utf8_lossy(&result.stdout).into_owned(),
        Response::Error(e) => {
            assert!(e.contains("signal"), "{e}");
            String::new()
        }
        other => panic!("{other:?}"),
    };
    // Where the machine's memory cgroups charge nothing (some virtual
    // machines), the node says so and bounds each process only.
    if env
        .node_log()
        .contains("a job's processes together bounded by a memory cgroup")
    {
        assert_ne!(lived, "lived 4 of 4\n", "800 MB in a 256 MB job");
    } else {
        assert!(env
            .node_log()
            .contains("each job process is bounded, not a job's total"));
        assert_eq!(lived, "lived 4 of 4\n");
        eprintln!("memory cgroups charge nothing here: a job's total was not bounded");
    }
    assert_clean(&env, UID_BASE + 3000);
}

/// A node run by an ordinary user has no per-slot uids, so a job's process
/// limit cannot be a per-uid limit set on bubblewrap (it would count all of
/// that user's processes): the node sets it on the sandbox's own init before
/// the job runs, where it counts the job's processes only. Before that, a
/// job of such a node forked without bound.
#[test]
fn an_ordinary_users_node_limits_a_jobs_processes_and_calls() {
    const USER: u32 = 4243;
    let mut env = Env::new("[sandbox]\ntimeout_secs = 20\nmax_processes = 8\n");
    // That user already runs more processes than a job may.
    let mut theirs: Vec<std::process::Child> = (0..12)
        .map(|_| {
            use std::os::unix::process::CommandExt;
            std::process::Command::new("sleep")
                .arg("60")
                .uid(USER)
                .gid(USER)
                .spawn()
                .unwrap()
        })
        .collect();
    env.start_node_as(USER);
    let (tc, probe) = probe_toolchain(&env);
    let out = probe_job(&env, tc, &probe, &["forks", "40"]);
    let forked: u32 = out
        .trim()
        .strip_prefix("forked ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    // The job's own process counts too: at most 7 more.
    assert!((1..8).contains(&forked), "{out}");
    assert_calls_contained(&probe_job(&env, tc, &probe, &["calls"]));
    for c in &mut theirs {
        let _ = c.kill();
        let _ = c.wait();
    }
}
