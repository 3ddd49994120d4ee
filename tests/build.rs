//! End-to-end: a real C code base (Lua 5.4) built through the node.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn lua_through_the_node_is_identical_runs_and_hits_the_cache() {
    let mut env = Env::new("");
    env.start_node();
    let work = tempfile::tempdir().unwrap();
    let (proj, reference) = lua_reference(work.path());
    assert_eq!(
        reference.iter().filter(|(n, _)| n.ends_with(".o")).count(),
        33
    );

    // Through swarmcc: every object and dependency file byte-identical.
    let cc = format!("CC={} gcc", swarmcc().display());
    run_ok(env.cmd("make").args(["-j2", &cc]).current_dir(&proj));
    let through = objects(&proj);
    assert_eq!(reference.len(), through.len());
    for ((n1, a), (n2, b)) in reference.iter().zip(&through) {
        assert_eq!(n1, n2);
        assert!(a == b, "{n1} differs from the local build");
    }
    let out = run_ok(Command::new(proj.join("luatest")).arg("print(string.format('%d', 6*7))"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let s = env.stats_json();
    assert_eq!(s["cache_misses"], 33, "{s}");
    assert_eq!(s["dist_errors"], 0, "{s}");
    assert_eq!(dist_total(&s), 33, "{s}");

    // Second build: every unit from the cache, still identical.
    run_ok(Command::new("make").arg("clean").current_dir(&proj));
    run_ok(env.cmd("make").args(["-j2", &cc]).current_dir(&proj));
    assert_eq!(objects(&proj), reference);
    let s = env.stats_json();
    assert_eq!(s["cache_hits"], 33, "{s}");
    run_ok(&mut Command::new(proj.join("luatest")));
}

#[test]
fn killing_the_node_mid_build_still_builds_correctly() {
    const UID_BASE: u32 = 3_960_000;
    let mut env = Env::new(&format!("[sandbox]\nuid_base = {UID_BASE}\n"));
    env.start_node();
    let work = tempfile::tempdir().unwrap();
    let (proj, reference) = lua_reference(work.path());

    let cc = format!("CC={} gcc", swarmcc().display());
    let mut make = env
        .cmd("make")
        .args(["-j2", &cc])
        .current_dir(&proj)
        .spawn()
        .unwrap();
    // Kill the node once a few objects exist (the build is under way).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        let n = std::fs::read_dir(proj.join("obj"))
            .map(|d| d.count())
            .unwrap_or(0);
        if n >= 6 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    env.kill_node();
    let status = make.wait().unwrap();
    assert!(status.success(), "build failed after the node was killed");
    assert_eq!(
        objects(&proj),
        reference,
        "objects differ from a local build"
    );
    run_ok(&mut Command::new(proj.join("luatest")));
    // No sandbox of the killed node lives on, nor of the one the wrapper
    // started in its place (idle now, with sandboxes set up ahead) once it
    // is stopped.
    run_ok(env.cmd(swarmcc()).arg("--stop-server"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut left = sandbox_processes(UID_BASE);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = sandbox_processes(UID_BASE);
    }
    assert!(left.is_empty(), "sandbox processes left behind: {left:?}");
}

#[test]
fn diagnostics_and_errors_pass_through_unchanged() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::create_dir_all(d.join("inc")).unwrap();
    std::fs::write(
        d.join("inc/h.h"),
        "#define SETZ(a) if (a = 0) {}\nstatic int unused_fn(void) { return 1; }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("warn.c"),
        "#include <stdio.h>\n#include \"h.h\"\nint f(int q) {\n    int unused;\n    SETZ(q)\n    printf(\"%d\\n\", 1L);\n    return q;\n}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("err.c"),
        "int g(void) {\n    return undeclared + 1;\n}\n#warning careful\n",
    )
    .unwrap();
    for (file, flags) in [
        ("warn.c", vec!["-Wall", "-Wextra", "-Iinc"]),
        ("warn.c", vec!["-g", "-O2", "-Wall", "-Iinc"]),
        ("err.c", vec!["-Wall"]),
    ] {
        let mut local = Command::new("gcc");
        local
            .args(&flags)
            .args(["-c", file, "-o", "local.o"])
            .current_dir(d)
            .env("LANG", "C.UTF-8");
        let l = local.output().unwrap();
        let mut remote = env.cmd(swarmcc());
        remote
            .arg("gcc")
            .args(&flags)
            .args(["-c", file, "-o", "remote.o"])
            .current_dir(d);
        let r = remote.output().unwrap();
        assert_eq!(l.status.code(), r.status.code(), "{file}: exit code");
        assert_eq!(
            String::from_utf8_lossy(&l.stderr),
            String::from_utf8_lossy(&r.stderr).replace("remote.o", "local.o"),
            "{file} {flags:?}: stderr differs"
        );
        assert!(
            !l.stderr.is_empty(),
            "the test file should produce diagnostics"
        );
        if l.status.success() {
            assert_eq!(
                std::fs::read(d.join("local.o")).unwrap(),
                std::fs::read(d.join("remote.o")).unwrap()
            );
        }
    }
    let s = env.stats_json();
    assert_eq!(
        s["compile_errors"], 1,
        "the error is the user's, counted as such: {s}"
    );
    assert_eq!(
        s["dist_errors"], 0,
        "a compile error is not a swarm failure: {s}"
    );
    assert_eq!(dist_total(&s), 2, "{s}");
}

#[test]
fn local_reasons_are_counted_and_work() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::write(d.join("a.c"), "int main(void) { return 0; }\n").unwrap();
    std::fs::write(d.join("b.c"), "int b(void) { return 1; }\n").unwrap();
    run_ok(env.cmd(swarmcc()).args(["--start-server"]));
    run_ok(
        env.cmd(swarmcc())
            .args(["gcc", "-E", "a.c", "-o", "a.i"])
            .current_dir(d),
    );
    run_ok(
        env.cmd(swarmcc())
            .args(["gcc", "-c", "a.c", "b.c"])
            .current_dir(d),
    );
    run_ok(
        env.cmd(swarmcc())
            .args(["gcc", "a.o", "b.o", "-o", "prog"])
            .current_dir(d),
    );
    run_ok(&mut Command::new(d.join("prog")));
    // Response file.
    std::fs::write(d.join("args.rsp"), "-c a.c -o a2.o").unwrap();
    run_ok(env.cmd(swarmcc()).args(["gcc", "@args.rsp"]).current_dir(d));
    assert!(d.join("a2.o").exists());
    let s = env.stats_json();
    let local = &s["local_compiles"];
    assert_eq!(local["preprocess_only"], 1, "{s}");
    assert_eq!(local["multiple_inputs"], 1, "{s}");
    assert_eq!(local["not_compile"], 1, "{s}");
    assert_eq!(s["cache_misses"], 1, "{s}");
    // Zeroing works.
    run_ok(env.cmd(swarmcc()).arg("-z"));
    assert_eq!(env.stats_json()["compile_requests"], 0);
}

#[test]
fn corrupted_cache_entry_is_not_served() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::write(d.join("a.c"), "int f(int x) { return x * 3; }\n").unwrap();
    run_ok(
        Command::new("gcc")
            .args(["-O2", "-c", "a.c", "-o", "ref.o"])
            .current_dir(d),
    );
    run_ok(
        env.cmd(swarmcc())
            .args(["gcc", "-O2", "-c", "a.c", "-o", "a.o"])
            .current_dir(d),
    );
    // Damage every cache entry on disk (written moments after the answer,
    // and served from memory until then: so the node is stopped first).
    run_ok(env.cmd(swarmcc()).arg("--stop-server"));
    let cache = env.state().join("cache");
    let mut damaged = 0;
    for shard in std::fs::read_dir(&cache).unwrap().flatten() {
        if shard.file_name().len() != 2 {
            continue;
        }
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let mut b = std::fs::read(f.path()).unwrap();
            let n = b.len();
            b[n - 5] ^= 0x55;
            std::fs::write(f.path(), b).unwrap();
            damaged += 1;
        }
    }
    assert_eq!(damaged, 1);
    std::fs::remove_file(d.join("a.o")).unwrap();
    run_ok(
        env.cmd(swarmcc())
            .args(["gcc", "-O2", "-c", "a.c", "-o", "a.o"])
            .current_dir(d),
    );
    assert_eq!(
        std::fs::read(d.join("a.o")).unwrap(),
        std::fs::read(d.join("ref.o")).unwrap()
    );
    let s = env.stats_json();
    assert_eq!(s["cache_errors"], 1, "{s}");
    assert_eq!(s["cache_hits"], 0, "{s}");
}

#[test]
fn corrupted_toolchain_archive_is_rejected_and_the_build_falls_back() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::write(d.join("a.c"), "int f(int x) { return x + 1; }\n").unwrap();
    run_ok(
        Command::new("gcc")
            .args(["-c", "a.c", "-o", "ref.o"])
            .current_dir(d),
    );
    // Package through the node, then damage the stored archive before any
    // job unpacks it.
    run_ok(env.cmd(swarmcc()).arg("--start-server"));
    let archives = env.state().join("toolchains/archives");
    // A job makes the node package gcc; it unpacks right away, so remove the
    // unpacked root to force a fresh unpack from the (damaged) archive.
    run_ok(
        env.cmd(swarmcc())
            .args(["gcc", "-c", "a.c", "-o", "a.o"])
            .current_dir(d),
    );
    run_ok(env.cmd(swarmcc()).arg("--stop-server"));
    let ar = std::fs::read_dir(&archives)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&ar).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&ar, bytes).unwrap();
    let roots = env.sandbox_base().join("roots");
    std::fs::remove_dir_all(&roots).unwrap();
    std::fs::create_dir(&roots).unwrap();
    std::fs::remove_dir_all(env.state().join("cache")).unwrap();
    std::fs::remove_file(d.join("a.o")).unwrap();
    let out = run_ok(
        env.cmd(swarmcc())
            .args(["gcc", "-c", "a.c", "-o", "a.o"])
            .current_dir(d),
    );
    assert!(
        out.stderr.is_empty(),
        "fallback is silent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(d.join("a.o")).unwrap(),
        std::fs::read(d.join("ref.o")).unwrap()
    );
    let s = env.stats_json();
    assert_eq!(s["dist_errors"], 1, "{s}");
    assert!(!ar.exists(), "the damaged archive is dropped");
    // And the next compile packages the toolchain again and distributes.
    std::fs::remove_file(d.join("a.o")).unwrap();
    std::fs::write(d.join("a.c"), "int f(int x) { return x + 2; }\n").unwrap();
    run_ok(
        env.cmd(swarmcc())
            .args(["gcc", "-c", "a.c", "-o", "a.o"])
            .current_dir(d),
    );
    let s = env.stats_json();
    assert_eq!(dist_total(&s), 2, "one before the damage, one after: {s}");
    assert_eq!(s["toolchains_packaged"], 2, "{s}");
}

#[test]
fn direct_mode_hits_restore_deps_and_never_serve_a_changed_header() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::create_dir_all(d.join("inc")).unwrap();
    std::fs::write(d.join("inc/v.h"), "#define V 1\n").unwrap();
    // <time.h> names `__TIME_T_TYPE`, `__TIMESIZE`...: no `__TIME__`.
    std::fs::write(
        d.join("a.c"),
        "#include \"v.h\"\n#include <time.h>\nint v(void) { return V + (int)sizeof(time_t); }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("b.c"),
        "int stamp(void) { return sizeof(__TIME__); }\n",
    )
    .unwrap();
    let local = |out: &str| {
        run_ok(
            Command::new("gcc")
                .args(["-O2", "-Iinc", "-c", "a.c", "-MD", "-o", out])
                .current_dir(d),
        );
    };
    let through = || {
        run_ok(
            env.cmd(swarmcc())
                .args(["gcc", "-O2", "-Iinc", "-c", "a.c", "-MD", "-o", "a.o"])
                .current_dir(d),
        );
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    through(); // miss: compiled, manifest stored
    std::fs::remove_file(d.join("a.o")).unwrap();
    std::fs::remove_file(d.join("a.d")).unwrap();
    through(); // direct hit: object and dependency file restored
    let (obj, dep) = (
        std::fs::read(d.join("a.o")).unwrap(),
        std::fs::read(d.join("a.d")).unwrap(),
    );
    local("a.o"); // the same command run by gcc alone writes the same two files
    assert_eq!(obj, std::fs::read(d.join("a.o")).unwrap());
    assert_eq!(
        String::from_utf8(dep).unwrap(),
        std::fs::read_to_string(d.join("a.d")).unwrap()
    );
    local("ref.o");
    let s = env.stats_json();
    assert_eq!(
        (
            s["cache_hits"].as_u64(),
            s["direct_hits"].as_u64(),
            s["cache_misses"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{s}"
    );

    // Change the header (same size, so only the content tells): not served stale.
    std::fs::write(d.join("inc/v.h"), "#define V 2\n").unwrap();
    through();
    local("ref2.o");
    assert_eq!(
        std::fs::read(d.join("a.o")).unwrap(),
        std::fs::read(d.join("ref2.o")).unwrap()
    );
    assert_ne!(
        std::fs::read(d.join("ref.o")).unwrap(),
        std::fs::read(d.join("ref2.o")).unwrap()
    );
    let s = env.stats_json();
    assert_eq!(
        (
            &s["compile_requests"],
            &s["cache_misses"],
            &s["direct_hits"]
        ),
        (&3.into(), &2.into(), &1.into()),
        "the hit the node offered and the client refused is not counted: {s}"
    );

    // __TIME__ keeps a unit out of direct mode: every compile preprocesses
    // (a cache hit needs the same preprocessed text, which changes each second).
    // (Manifests reach the disk in the background, moments after the
    // answer.)
    let manifests = || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        walk_files(&env.state().join("cache/manifests"))
    };
    let before = manifests();
    assert_eq!(
        before, 2,
        "a.c's manifest, under its key and its unit's hint"
    );
    for _ in 0..2 {
        run_ok(
            env.cmd(swarmcc())
                .args(["gcc", "-O2", "-c", "b.c", "-o", "b.o"])
                .current_dir(d),
        );
    }
    assert_eq!(manifests(), before, "none for b.c");
}

fn walk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().len() == 2)
                .map(|e| std::fs::read_dir(e.path()).map(|r| r.count()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
/// A unit the include scanner cannot follow (a computed `#include`) is
/// preprocessed on its first compile; later, edited, it compiles from a
/// guess of the files it read last time.
fn edited_sources_compile_from_the_last_manifest_and_new_includes_are_caught() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::create_dir_all(d.join("inc")).unwrap();
    std::fs::write(d.join("inc/a.h"), "#define A 1\n").unwrap();
    std::fs::write(d.join("inc/b.h"), "#define B 2\n").unwrap();
    // Only the preprocessor knows what this names.
    const COMPUTED: &str = "#define CONF \"a.h\"\n#include CONF\n";
    let both = |src: &str, tag: &str| {
        std::fs::write(d.join("u.c"), src).unwrap();
        let args = [
            "-O2", "-g", "-Iinc", "-c", "u.c", "-o", "obj/u.o", "-MMD", "-MP",
        ];
        std::fs::create_dir_all(d.join("obj")).unwrap();
        run_ok(Command::new("gcc").args(args).current_dir(d));
        let (lo, ld) = (
            std::fs::read(d.join("obj/u.o")).unwrap(),
            std::fs::read(d.join("obj/u.d")).unwrap(),
        );
        std::fs::remove_dir_all(d.join("obj")).unwrap();
        std::fs::create_dir_all(d.join("obj")).unwrap();
        run_ok(env.cmd(swarmcc()).arg("gcc").args(args).current_dir(d));
        assert!(
            lo == std::fs::read(d.join("obj/u.o")).unwrap(),
            "{tag}: object differs"
        );
        assert_eq!(
            ld,
            std::fs::read(d.join("obj/u.d")).unwrap(),
            "{tag}: dependency file differs"
        );
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    both(
        &format!("{COMPUTED}#include \"a.h\"\nint u(void) {{ return A; }}\n"),
        "first",
    );
    let s = env.stats_json();
    assert_eq!(s["speculative_compiles"], 0, "{s}");
    // Edited, same includes: no local preprocessing, proven by the builder.
    both(
        &format!("{COMPUTED}#include \"a.h\"\nint u(void) {{ return A + 40; }}\n"),
        "edited",
    );
    let s = env.stats_json();
    assert_eq!(
        (
            s["speculative_compiles"].as_u64(),
            s["speculation_misses"].as_u64()
        ),
        (Some(1), Some(0)),
        "{s}"
    );
    // A new include the guess lacks: caught, redone with preprocessing, right.
    both(
        &format!("{COMPUTED}#include \"a.h\"\n#include \"b.h\"\nint u(void) {{ return A + B; }}\n"),
        "new include",
    );
    let s = env.stats_json();
    assert_eq!(s["speculation_misses"], 1, "{s}");
    assert_eq!(s["dist_errors"], 0, "never a failure: {s}");
    assert_eq!(
        (&s["compile_requests"], &s["cache_misses"]),
        (&3.into(), &3.into()),
        "one request per compile, the redone guess's too: {s}"
    );
    // A compile error under speculation is redone the checked way and is
    // then the user's error, exactly as gcc reports it.
    std::fs::write(
        d.join("u.c"),
        format!(
            "{COMPUTED}#include \"a.h\"\n#include \"b.h\"\nint u(void) {{ return A + B + C; }}\n"
        ),
    )
    .unwrap();
    let args = [
        "-O2", "-g", "-Iinc", "-c", "u.c", "-o", "obj/u.o", "-MMD", "-MP",
    ];
    let l = Command::new("gcc")
        .args(args)
        .current_dir(d)
        .env("LANG", "C.UTF-8")
        .output()
        .unwrap();
    let r = env
        .cmd(swarmcc())
        .arg("gcc")
        .args(args)
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(l.status.code(), r.status.code());
    assert_eq!(
        String::from_utf8_lossy(&l.stderr),
        String::from_utf8_lossy(&r.stderr)
    );
    let s = env.stats_json();
    assert_eq!(
        s["speculation_misses"], 2,
        "the failed guess was redone: {s}"
    );
    assert_eq!(s["compile_errors"], 1, "{s}");
}

/// First compiles skip local preprocessing: the client follows the unit's
/// includes in gcc's search path. Headers shadowed in earlier directories,
/// `#include_next`, `__has_include`, forced includes and Lua's
/// `#include LUA_USER_H` all resolve as gcc resolves them: objects and
/// dependency files are identical to a local compile's, and every guess is
/// proven by the builder.
#[test]
fn first_compiles_follow_includes_instead_of_preprocessing() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let files: &[(&str, &str)] = &[
        ("a/cfg.h", "#define WHO 1\n#include_next <cfg.h>\n"),
        ("b/cfg.h", "#define WHO_TOO 2\n"),
        ("c/cfg.h", "#error never: b/cfg.h has no include_next\n"),
        ("b/opt.h", "#define OPT 3\n"),
        ("b/y.h", "#ifndef Y\n#define Y 100\n#endif\n"),
        ("sub/x.h", "#include \"y.h\"\n"),
        ("sub/y.h", "#ifndef Y\n#define Y 4\n#endif\n"),
        ("force.h", "#define FORCED 5\n"),
        (
            "src/one.c",
            "#include <cfg.h>\n#include \"../sub/x.h\"\n#include <stdio.h>\n\
             int one(void) { printf(\"%d\", WHO + WHO_TOO + Y + FORCED); return 0; }\n",
        ),
        (
            "src/two.c",
            "#if __has_include(<opt.h>)\n#include <opt.h>\n#else\n#define OPT 0\n#endif\n\
             #if defined(USER_H)\n#include USER_H\n#endif\n#include <limits.h>\n\
             #include \"../sub/x.h\"\n#include <y.h>\n\
             int two(void) { return OPT + CHAR_BIT + Y; }\n",
        ),
        (
            "src/three.cc",
            "#include <vector>\n#include <cfg.h>\nint three() { std::vector<int> v{WHO}; return v[0]; }\n",
        ),
    ];
    for (name, text) in files {
        let p = d.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let units: &[(&str, &str, &[&str])] = &[
        (
            "gcc",
            "src/one.c",
            &["-Ia", "-Ib", "-Ic", "-include", "force.h", "-MD"],
        ),
        ("gcc", "src/two.c", &["-Ia", "-Ib", "-MMD", "-MP"]),
        ("g++", "src/three.cc", &["-Ia", "-Ib", "-Ic", "-MD"]),
    ];
    std::thread::sleep(std::time::Duration::from_millis(20));
    for (cc, src, extra) in units {
        let stem = std::path::Path::new(src)
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap();
        let obj = format!("obj/{stem}.o");
        let mut args: Vec<&str> = vec!["-O2", "-g", "-c", src, "-o", &obj];
        args.extend(*extra);
        std::fs::create_dir_all(d.join("obj")).unwrap();
        run_ok(Command::new(cc).args(&args).current_dir(d));
        let local = (
            std::fs::read(d.join(&obj)).unwrap(),
            std::fs::read(d.join(format!("obj/{stem}.d"))).unwrap(),
        );
        std::fs::remove_dir_all(d.join("obj")).unwrap();
        std::fs::create_dir_all(d.join("obj")).unwrap();
        run_ok(env.cmd(swarmcc()).arg(cc).args(&args).current_dir(d));
        assert!(
            local.0 == std::fs::read(d.join(&obj)).unwrap(),
            "{src}: object differs"
        );
        assert_eq!(
            String::from_utf8_lossy(&local.1),
            String::from_utf8_lossy(&std::fs::read(d.join(format!("obj/{stem}.d"))).unwrap()),
            "{src}: dependency file differs"
        );
    }
    let s = env.stats_json();
    assert_eq!(s["speculative_compiles"], 3, "every unit from a scan: {s}");
    assert_eq!(s["speculation_misses"], 0, "{s}");
    assert_eq!(dist_total(&s), 3, "{s}");

    // A computed include under a macro that is defined: only the
    // preprocessor can tell, so the unit is preprocessed (and still right).
    std::fs::write(
        d.join("src/four.c"),
        "#define USER_H \"../sub/y.h\"\n#if defined(USER_H)\n#include USER_H\n#endif\nint four(void) { return Y; }\n",
    )
    .unwrap();
    let args = ["-O2", "-c", "src/four.c", "-o", "obj/four.o"];
    run_ok(env.cmd(swarmcc()).arg("gcc").args(args).current_dir(d));
    let s = env.stats_json();
    assert_eq!(s["speculative_compiles"], 3, "not guessed: {s}");
    assert_eq!(s["cache_misses"], 4, "but distributed: {s}");
    assert!(same_as_local(d, &args, "obj/four.o"));
}

/// Whether a local compile with `args` writes the same object as the one at `obj`.
fn same_as_local(d: &std::path::Path, args: &[&str], obj: &str) -> bool {
    let remote = std::fs::read(d.join(obj)).unwrap();
    run_ok(Command::new("gcc").args(args).current_dir(d));
    remote == std::fs::read(d.join(obj)).unwrap()
}

/// `strict_inputs` asks for the full preprocessing check on every job:
/// no guess, even where one could be made.
#[test]
fn strict_inputs_never_guesses() {
    let env = Env::new("[dist]\nstrict_inputs = true\n");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::write(
        d.join("s.c"),
        "#include <stdio.h>\nint s(void) { return puts(\"s\"); }\n",
    )
    .unwrap();
    let args = ["-O2", "-c", "s.c", "-o", "s.o"];
    run_ok(env.cmd(swarmcc()).arg("gcc").args(args).current_dir(d));
    std::fs::write(
        d.join("s.c"),
        "#include <stdio.h>\nint s(void) { return puts(\"t\"); }\n",
    )
    .unwrap();
    run_ok(env.cmd(swarmcc()).arg("gcc").args(args).current_dir(d));
    let s = env.stats_json();
    assert_eq!(s["cache_misses"], 2, "{s}");
    assert_eq!(s["speculative_compiles"], 0, "{s}");
    assert!(same_as_local(d, &args, "s.o"));
}

/// The node a wrapper starts keeps none of the build's descriptors: a CI
/// step that waits for the end of the build's output pipe must not wait for
/// the node too.
#[test]
fn a_node_started_by_the_wrapper_holds_none_of_the_builds_descriptors() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let env = Env::new("");
    let (mut r, w) = std::io::pipe().unwrap();
    let wfd = w.as_raw_fd();
    let mut cmd = env.cmd(swarmcc());
    cmd.arg("--start-server");
    // Inherited by this child only (the test harness runs other tests at once).
    // SAFETY: fcntl is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(wfd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    run_ok(&mut cmd);
    drop(w);
    assert!(
        std::os::unix::net::UnixStream::connect(env.socket()).is_ok(),
        "the node runs"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        let _ = tx.send(r.read(&mut buf).map_err(|e| e.to_string()));
    });
    let got = rx.recv_timeout(Duration::from_secs(10));
    assert!(
        matches!(got, Ok(Ok(0))),
        "the pipe did not end while the node runs: {got:?}"
    );
    // Its log is a file: plain text, no terminal colour codes.
    let log = std::fs::read_to_string(env.state().join("node.log")).unwrap();
    assert!(log.contains("INFO"), "the node logs: {log}");
    assert!(!log.contains('\x1b'), "escape codes in node.log: {log:?}");
}

/// Files that have not changed for a while are known by their `stat`
/// (device, inode, size, mtime, ctime) and not read again; a header then
/// rewritten in place with the same size and its mtime set back is still
/// seen, by the direct-mode check and by the scan of a first compile.
#[test]
fn known_headers_rewritten_in_place_are_never_taken_for_unchanged() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::create_dir_all(d.join("inc")).unwrap();
    std::fs::write(d.join("inc/v.h"), "#define V 1\n").unwrap();
    std::fs::write(
        d.join("a.c"),
        "#include \"v.h\"\n#include <stdio.h>\nint v(void) { return V; }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("b.c"),
        "#include \"v.h\"\nint w(void) { return V * 3; }\n",
    )
    .unwrap();
    // Only files unchanged for a few seconds are kept.
    std::thread::sleep(Duration::from_secs(4));
    let through = |unit: &str| {
        run_ok(
            env.cmd(swarmcc())
                .args(["gcc", "-O2", "-Iinc", "-c", unit, "-o", "out.o"])
                .current_dir(d),
        );
        std::fs::read(d.join("out.o")).unwrap()
    };
    let local = |unit: &str| {
        run_ok(
            Command::new("gcc")
                .args(["-O2", "-Iinc", "-c", unit, "-o", "ref.o"])
                .current_dir(d),
        );
        std::fs::read(d.join("ref.o")).unwrap()
    };
    assert_eq!(through("a.c"), local("a.c"));
    assert_eq!(through("a.c"), local("a.c"), "a direct hit");
    let kept = env.state().join("file-info");
    assert_eq!(
        std::fs::read_dir(&kept).unwrap().count(),
        1,
        "one set: one toolchain, one directory"
    );
    let old = std::fs::metadata(d.join("inc/v.h"))
        .unwrap()
        .modified()
        .unwrap();
    let rewrite = |text: &str| {
        let f = std::fs::File::options()
            .write(true)
            .open(d.join("inc/v.h"))
            .unwrap();
        use std::io::Write;
        (&f).write_all(text.as_bytes()).unwrap();
        f.set_modified(old).unwrap();
    };
    rewrite("#define V 2\n");
    let two = local("a.c");
    assert_eq!(through("a.c"), two, "the direct-mode check read it again");
    // b.c is new to the cache: its first compile scans its includes.
    rewrite("#define V 5\n");
    assert_eq!(through("b.c"), local("b.c"), "the scan read it again");
    let s = env.stats_json();
    // A direct hit whose manifest no longer holds is not counted as one.
    assert_eq!(
        (&s["compile_requests"], &s["cache_hits"], &s["direct_hits"]),
        (&4.into(), &1.into(), &1.into()),
        "{s}"
    );
    assert_eq!(s["speculative_compiles"], 3, "{s}");
}

#[test]
fn a_changed_compiler_is_never_answered_from_its_old_toolchain() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    // `cc` is gcc, then clang: the same compiler path, another toolchain.
    let bin = tempfile::tempdir().unwrap();
    let cc = bin.path().join("cc");
    std::os::unix::fs::symlink("/usr/bin/gcc", &cc).unwrap();
    std::fs::write(d.join("a.c"), "int a(int x) { return x * 7; }\n").unwrap();
    let local = || {
        run_ok(
            Command::new(&cc)
                .args(["-O2", "-c", "a.c", "-o", "ref.o"])
                .current_dir(d),
        );
        std::fs::read(d.join("ref.o")).unwrap()
    };
    let through = || {
        run_ok(
            env.cmd(swarmcc())
                .arg(&cc)
                .args(["-O2", "-c", "a.c", "-o", "a.o"])
                .current_dir(d),
        );
        std::fs::read(d.join("a.o")).unwrap()
    };
    let counts = || {
        let s = env.stats_json();
        let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k}: {s}"));
        (n("compile_requests"), n("cache_hits"), n("cache_misses"))
    };
    let by_gcc = local();
    assert!(through() == by_gcc);
    assert!(through() == by_gcc);
    assert_eq!(counts(), (2, 1, 1), "a miss, then a direct hit");
    // The wrapper asks for the toolchain and looks up the key it had last
    // time at once; the node now names clang's toolchain, so gcc's object,
    // found under that key, must not be taken.
    std::fs::remove_file(&cc).unwrap();
    std::os::unix::fs::symlink("/usr/bin/clang", &cc).unwrap();
    let by_clang = local();
    assert_ne!(by_gcc, by_clang);
    assert!(through() == by_clang, "gcc's object served for clang");
    assert_eq!(counts(), (3, 1, 2), "compiled again, by clang");
    assert!(through() == by_clang);
    assert_eq!(counts(), (4, 2, 2), "then hits under clang's toolchain");
}

#[test]
fn a_compiler_kept_under_the_working_directory_is_distributed() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    // As Android's prebuilts: the compiler lives in the project, and the
    // job's writable directory (bound at the cwd) must not hide it.
    std::fs::create_dir(d.join("prebuilts")).unwrap();
    let cc = d.join("prebuilts/gcc");
    std::os::unix::fs::symlink("/usr/bin/gcc", &cc).unwrap();
    std::fs::write(d.join("a.c"), "int a(int x) { return x * 9; }\n").unwrap();
    run_ok(
        env.cmd(swarmcc())
            .args(["prebuilts/gcc", "-O2", "-c", "a.c", "-o", "a.o"])
            .current_dir(d),
    );
    run_ok(
        Command::new(&cc)
            .args(["-O2", "-c", "a.c", "-o", "ref.o"])
            .current_dir(d),
    );
    assert!(std::fs::read(d.join("a.o")).unwrap() == std::fs::read(d.join("ref.o")).unwrap());
    let s = env.stats_json();
    assert_eq!(
        (dist_total(&s), s["dist_errors"].as_u64()),
        (1, Some(0)),
        "{s}\n{}",
        env.node_log()
    );
}

/// A node whose socket is removed while it runs (a tmp cleaner) makes it
/// again, so compiles reach it again instead of waiting and going local;
/// on its way out it removes only the socket it made, not one another node
/// put in its place.
#[test]
fn a_node_makes_its_removed_socket_again_and_removes_only_its_own() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    let mut env = Env::new("");
    env.start_node();
    let sock = env.socket();
    std::fs::remove_file(&sock).unwrap();
    wait_for("the socket made again", Duration::from_secs(10), || {
        UnixStream::connect(&sock).is_ok()
    });
    let dir = compile_tiny(&env);
    let s = env.stats_json();
    assert_eq!(dist_total(&s), 1, "the compile went through the node: {s}");

    // Another socket renamed over it (the path is never missing): the
    // node leaves it, and leaves it there when it stops.
    let other = dir.path().join("other.sock");
    let _other = UnixListener::bind(&other).unwrap();
    std::fs::rename(&other, &sock).unwrap();
    let ino = std::fs::metadata(&sock).unwrap().ino();
    std::thread::sleep(Duration::from_millis(1500));
    let mut node = env.node.take().unwrap();
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(node.id() as libc::pid_t, libc::SIGTERM) };
    node.wait().unwrap();
    let left = std::fs::metadata(&sock).map(|m| m.ino());
    assert_eq!(
        left.ok(),
        Some(ino),
        "the node removed a socket it had not made"
    );
}

/// A wrapper that finds the state dir's lock held (a node runs, or is
/// starting) but no socket waits for that node instead of starting a
/// second one only to be told one runs; with none coming, it compiles
/// locally.
#[test]
fn a_wrapper_starts_no_second_node_while_one_holds_the_lock() {
    use std::os::fd::AsRawFd;
    let env = Env::new("[node]\nstart_timeout_secs = 1\n");
    let lock = std::fs::File::create(env.state().join("node.lock")).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let dir = compile_tiny(&env);
    assert!(dir.path().join("a.o").exists());
    let log = env.node_log();
    assert!(
        !log.contains("already running"),
        "a second node was started: {log}"
    );
}
