//! The ways a build system invokes swarmcc, and the languages and toolchains
//! it handles, each checked against what gcc alone produces.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn same_file(a: &Path, b: &Path) {
    assert_eq!(
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        "{} != {}",
        a.display(),
        b.display()
    );
}

#[test]
fn gcc_gxx_clang_clangxx_and_assembler_objects_and_diagnostics_are_identical() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::write(
        d.join("v.cpp"),
        "#include <vector>\n#include <string>\n#include <map>\n#include <iostream>\n#include <algorithm>\n\
         int count(const std::vector<std::string>& v) {\n  std::map<std::string, int> m;\n  for (auto& s : v) m[s]++;\n\
         std::cout << m.size() << std::endl;\n  return std::count_if(v.begin(), v.end(), [](auto& s) { return s.size() > 2; });\n}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("s.S"),
        "#define VAL 42\n.globl f\nf:\n  movl $VAL, %eax\n  ret\n",
    )
    .unwrap();
    std::fs::write(
        d.join("w.c"),
        "#include <stdio.h>\n#include <stddef.h>\nint w(int x) {\n  int unused;\n  printf(\"%s\\n\", x);\n  return (int)sizeof(size_t);\n}\n",
    )
    .unwrap();
    let cases = [
        ("g++", "v.cpp", "-O2 -g -std=c++17 -Wall"),
        ("gcc", "s.S", "-g"),
        ("gcc", "w.c", "-O2 -g -Wall"),
        ("clang", "w.c", "-O2 -g -Wall"),
        ("clang++", "v.cpp", "-O2 -g -std=c++17 -Wall"),
    ];
    for (compiler, src, flags) in cases {
        let flags: Vec<&str> = flags.split(' ').collect();
        let local = run_ok(
            Command::new(compiler)
                .args(&flags)
                .args(["-c", src, "-o", "ref.o"])
                .env("LANG", "C.UTF-8")
                .current_dir(d),
        );
        let swarm = run_ok(
            env.cmd(swarmcc())
                .arg(compiler)
                .args(&flags)
                .args(["-c", src, "-o", "out.o"])
                .current_dir(d),
        );
        same_file(&d.join("ref.o"), &d.join("out.o"));
        assert_eq!(
            String::from_utf8_lossy(&local.stderr),
            String::from_utf8_lossy(&swarm.stderr),
            "{compiler} {src}: diagnostics differ"
        );
        if src == "w.c" {
            assert!(
                String::from_utf8_lossy(&swarm.stderr).contains("warning"),
                "{compiler}: the sample warns"
            );
        }
    }
    let s = env.stats_json();
    assert_eq!(dist_total(&s), cases.len() as u64, "{s}");
    // Every unit compiled from a scan of its includes, none redone.
    assert_eq!(s["speculative_compiles"], cases.len() as u64, "{s}");
    assert_eq!(s["speculation_misses"], 0, "{s}");
}

/// Assembler units, `.s` (no preprocessor) and `.S` (preprocessed like C),
/// as OpenSSL's and many libraries' builds have them: objects, diagnostics
/// and exit codes as the compiler's own, distributed and then cached. A
/// `.s` that makes the assembler read another file compiles locally.
#[test]
fn assembler_units_are_distributed_cached_and_identical() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::create_dir(d.join("obj")).unwrap();
    std::fs::write(
        d.join("a.s"),
        "\t.text\n\t.globl a\n\t.type a, @function\na:\n\tmovl $7, %eax\n\tret\n\t.warning \"a warns\"\n\t.section .note.GNU-stack,\"\",@progbits\n",
    )
    .unwrap();
    std::fs::write(
        d.join("b.S"),
        "#include \"b.h\"\n\t.text\n\t.globl b\nb:\n\tmovl $VAL, %eax\n\tret\n",
    )
    .unwrap();
    std::fs::write(d.join("b.h"), "#define VAL 42\n").unwrap();
    std::fs::write(d.join("bad.s"), "\t.text\n\tnosuchinsn %eax\n").unwrap();
    std::fs::write(d.join("inc.s"), "\t.include \"a.s\"\n").unwrap();
    let cases = [
        ("gcc", "a.s", "-g"),
        ("gcc", "a.s", "-Wa,--noexecstack -MMD -MF obj/a.d"),
        ("clang", "a.s", "-g"),
        ("clang", "a.s", "-MD"),
        ("gcc", "b.S", "-g -MMD -MF obj/a.d -MT x.o"),
        ("clang", "b.S", "-O2"),
        ("gcc", "bad.s", ""),
    ];
    let compile = |cmd: &mut Command, compiler: &str, src: &str, flags: &str, out: &str| {
        let o = cmd
            .arg(compiler)
            .args(flags.split(' ').filter(|f| !f.is_empty()))
            .args(["-c", src, "-o", out])
            .env("LANG", "C.UTF-8")
            .current_dir(d)
            .output()
            .unwrap();
        let obj = std::fs::read(d.join(out)).ok();
        let dep = std::fs::read(d.join("obj/a.d")).ok();
        let _ = std::fs::remove_file(d.join("obj/a.d"));
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            obj,
            dep,
        )
    };
    for round in ["distributed", "cached"] {
        for (compiler, src, flags) in cases {
            let _ = std::fs::remove_file(d.join("obj/ref.o"));
            let _ = std::fs::remove_file(d.join("obj/out.o"));
            let local = compile(&mut Command::new("env"), compiler, src, flags, "obj/ref.o");
            let swarm = compile(&mut env.cmd(swarmcc()), compiler, src, flags, "obj/out.o");
            assert_eq!(local, swarm, "{round}: {compiler} {flags} {src}");
            if src == "bad.s" {
                assert!(
                    local.0 != Some(0) && local.1.contains("nosuchinsn"),
                    "{local:?}"
                );
            } else if src == "a.s" && compiler == "gcc" {
                assert!(local.1.contains("a warns"), "{local:?}");
            } else {
                assert!(local.2.is_some(), "{compiler} {src}");
            }
        }
    }
    let s = env.stats_json();
    let n = cases.len() as u64;
    // The failing unit fails in the swarm too (each time: failures are not
    // cached); the others went out once and were cache hits after.
    assert_eq!(dist_total(&s), n - 1, "{s}");
    assert_eq!(s["cache_hits"], n - 1, "{s}");
    assert_eq!(s["compile_errors"], 2, "{s}");
    assert_eq!(s["local_compiles"], serde_json::json!({}), "{s}");
    // `.include`: the assembler's own search, so a local compile.
    let local = compile(&mut Command::new("env"), "gcc", "inc.s", "", "obj/ref.o");
    let swarm = compile(&mut env.cmd(swarmcc()), "gcc", "inc.s", "", "obj/out.o");
    assert_eq!(local, swarm);
    assert!(local.2.is_some());
    assert_eq!(
        env.stats_json()["local_compiles"]["assembler_include"],
        1,
        "{}",
        env.stats_json()
    );
}

#[test]
fn symlinks_launchers_and_rustc() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::write(d.join("a.c"), "int a(int x) { return x * 7; }\n").unwrap();
    run_ok(
        Command::new("gcc")
            .args(["-O2", "-c", "a.c", "-o", "ref.o"])
            .current_dir(d),
    );
    // A `gcc` symlink to swarmcc first on PATH wraps the real gcc behind it.
    let bin = d.join("bin");
    std::fs::create_dir(&bin).unwrap();
    for name in ["gcc", "cc"] {
        std::os::unix::fs::symlink(swarmcc(), bin.join(name)).unwrap();
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    run_ok(
        env.cmd("gcc")
            .env("PATH", &path)
            .args(["-O2", "-c", "a.c", "-o", "sym.o"])
            .current_dir(d),
    );
    same_file(&d.join("ref.o"), &d.join("sym.o"));
    // CMAKE_C_COMPILER_LAUNCHER=swarmcc: the compiler comes as an absolute path.
    run_ok(
        env.cmd(swarmcc())
            .args(["/usr/bin/cc", "-O2", "-c", "a.c", "-o", "cmake.o"])
            .current_dir(d),
    );
    same_file(&d.join("ref.o"), &d.join("cmake.o"));
    assert_eq!(dist_total(&env.stats_json()), 2);
    // RUSTC_WRAPPER=swarmcc: rustc runs locally, counted as unsupported.
    let rustc = String::from_utf8(
        Command::new("rustup")
            .args(["which", "rustc"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .unwrap_or_default()
    .trim()
    .to_string();
    let rustc = if rustc.is_empty() {
        "rustc".to_string()
    } else {
        rustc
    };
    let out = run_ok(
        env.cmd(swarmcc())
            .args([rustc.as_str(), "--version"])
            .current_dir(d),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("rustc "),
        "{out:?}"
    );
    assert_eq!(
        env.stats_json()["local_compiles"]["unsupported_compiler"],
        1
    );
}

#[test]
fn custom_toolchains_path_override_and_no_dist() {
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let archive = d.join("gcc.tar.zst");
    let out = run_ok(
        Command::new(swarmcc())
            .args(["package-toolchain", "gcc"])
            .arg(&archive),
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 64, "prints the toolchain id: {id}");
    let gcc = std::fs::canonicalize("/usr/bin/gcc").unwrap();
    let env = Env::new(&format!(
        "[[dist.toolchains]]\ntype = \"path_override\"\ncompiler_executable = \"/usr/bin/gcc\"\n\
         archive = \"{}\"\narchive_compiler_executable = \"{}\"\n\n\
         [[dist.toolchains]]\ntype = \"no_dist\"\ncompiler_executable = \"/usr/bin/cc\"\n",
        archive.display(),
        gcc.display()
    ));
    std::fs::write(d.join("a.c"), "int a(int x) { return x - 7; }\n").unwrap();
    run_ok(
        Command::new("gcc")
            .args(["-c", "a.c", "-o", "ref.o"])
            .current_dir(d),
    );
    run_ok(
        env.cmd(swarmcc())
            .args(["/usr/bin/gcc", "-c", "a.c", "-o", "o1.o"])
            .current_dir(d),
    );
    same_file(&d.join("ref.o"), &d.join("o1.o"));
    let s = env.stats_json();
    assert_eq!(dist_total(&s), 1, "{s}");
    assert_eq!(
        s["toolchains_packaged"], 0,
        "the archive was used, nothing packaged: {s}"
    );
    assert!(env
        .state()
        .join(format!("toolchains/archives/{id}.tar.zst"))
        .exists());
    run_ok(
        env.cmd(swarmcc())
            .args(["/usr/bin/cc", "-c", "a.c", "-o", "o2.o"])
            .current_dir(d),
    );
    same_file(&d.join("ref.o"), &d.join("o2.o"));
    assert_eq!(
        env.stats_json()["local_compiles"]["unsupported_compiler"],
        1
    );
}

#[test]
fn a_node_without_bubblewrap_refuses_to_build_and_the_build_still_works() {
    let env = Env::new("[sandbox]\nbwrap = \"/nonexistent/bwrap\"\n");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::write(d.join("a.c"), "int a(void) { return 1; }\n").unwrap();
    run_ok(
        env.cmd(swarmcc())
            .args(["gcc", "-c", "a.c", "-o", "a.o"])
            .current_dir(d),
    );
    assert!(d.join("a.o").exists());
    let s = env.stats_json();
    assert_eq!(s["dist_errors"], 1, "{s}");
    let log = env.node_log();
    assert!(
        log.contains("will not build") && log.contains("apt-get install bubblewrap"),
        "{log}"
    );
    // Said where people look, not only in the log.
    for args in [&["status"][..], &["-s"][..]] {
        let shown = out(env.cmd(swarmcc()).args(args));
        assert!(
            shown.contains("this node does not build:") && shown.contains("bubblewrap"),
            "{args:?}: {shown}"
        );
    }
}

/// `SWARMCC_LOG=debug` on a compile says why it went local, naming the
/// flag (as `SCCACHE_LOG` does); without it swarmcc adds nothing to the
/// compiler's stderr.
#[test]
fn swarmcc_log_debug_says_why_a_compile_went_local() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::write(d.join("a.c"), "int a(void) { return 1; }\n").unwrap();
    let run = |log: Option<&str>| {
        let mut c = env.cmd(swarmcc());
        c.env_remove("RUST_LOG")
            .args(["gcc", "-c", "a.c", "-o", "a.o", "-save-temps"])
            .current_dir(d);
        if let Some(l) = log {
            c.env("SWARMCC_LOG", l);
        }
        let o = run_ok(&mut c);
        String::from_utf8(o.stderr).unwrap()
    };
    let said = run(Some("debug"));
    assert!(
        said.contains("unsupported flag -save-temps")
            && said.contains("compiling locally (unsupported flag)"),
        "{said}"
    );
    assert_eq!(run(None), "");
}

/// A broken config makes every compile local; the first compile shows the
/// whole error, the next ones its first line only, until the error changes.
#[test]
fn a_broken_config_is_told_in_full_once_then_in_one_line() {
    let env = Env::new("[node]\nmax_jobs = \"x\"\n");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::write(d.join("a.c"), "int a(void) { return 1; }\n").unwrap();
    let run = || {
        let o = run_ok(
            env.cmd(swarmcc())
                .args(["gcc", "-c", "a.c", "-o", "a.o"])
                .current_dir(d),
        );
        assert!(d.join("a.o").is_file());
        String::from_utf8(o.stderr).unwrap()
    };
    let first = run();
    assert!(
        first.contains("max_jobs = \"x\"") && first.contains("expected usize"),
        "{first}"
    );
    let again = run();
    assert_eq!(again.lines().count(), 1, "{again}");
    assert!(
        again.contains("config.toml: TOML parse error at line 2")
            && again.contains("swarmcc status")
            && again.ends_with("compiling locally\n"),
        "{again}"
    );
    assert_eq!(run(), again);
    // Another error is told in full again.
    std::fs::write(env.state().join("config.toml"), "[node\n").unwrap();
    let other = run();
    assert!(other.lines().count() > 1, "{other}");
    // `swarmcc status` says it in full.
    let status = env.cmd(swarmcc()).arg("status").output().unwrap();
    assert!(!status.status.success());
    assert_eq!(
        String::from_utf8_lossy(&status.stderr).lines().count(),
        other.lines().count(),
        "{status:?}"
    );
}

/// Under a terminal the diagnostics come in colour exactly as the compiler
/// alone prints them (gcc and clang); a piped compile of the same unit is a
/// cache hit of that coloured compile and prints exactly the compiler's
/// plain text: colour and plain builds share cache entries.
#[test]
fn colour_under_a_terminal_is_the_compilers_own_and_shares_the_cache() {
    let env = Env::new("");
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::write(
        d.join("w.c"),
        "#include <stdio.h>\nint f(int x) { int y; if (x) return y; printf(\"%d\\n\", \"s\"); }\n",
    )
    .unwrap();
    // A command under a pseudo-terminal (util-linux's script): its output.
    let tty = |cmd: String| {
        let o = env
            .cmd("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("TERM", "xterm-256color")
            .stdin(std::process::Stdio::null())
            .current_dir(d)
            .output()
            .unwrap();
        assert!(o.status.success(), "{cmd}");
        o.stdout
    };
    let piped = |c: &mut Command| {
        let o = c
            .current_dir(d)
            .env("TERM", "xterm-256color")
            .output()
            .unwrap();
        assert!(o.status.success());
        o.stderr
    };
    let me = swarmcc();
    for (n, cc) in ["gcc", "clang"].into_iter().enumerate() {
        let flags = "-Wall -O2 -c w.c -o w.o";
        let plain = tty(format!("{cc} {flags}"));
        assert!(plain.contains(&0x1b), "{cc} colours under a terminal");
        let through = tty(format!("{} {cc} {flags}", me.display()));
        assert_eq!(
            String::from_utf8_lossy(&through),
            String::from_utf8_lossy(&plain),
            "{cc} under a terminal"
        );
        let want = piped(Command::new(cc).args(flags.split(' ')));
        assert!(!want.contains(&0x1b));
        let got = piped(env.cmd(&me).arg(cc).args(flags.split(' ')));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{cc} piped"
        );
        let s = env.stats_json();
        assert_eq!(s["cache_hits"], n as u64 + 1, "the piped compile hit: {s}");
    }
}

/// An object that cannot be written where the user asked is the user's
/// error: the compiler reports it, exactly as alone, once and locally, and
/// it is counted as such, not as a swarm failure.
#[test]
fn an_unwritable_output_is_the_users_error_compiled_once() {
    let mut env = Env::new("");
    env.start_node();
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    std::fs::write(d.join("a.c"), "int a(void) { return 1; }\n").unwrap();
    let run = |c: &mut Command| c.current_dir(d).output().unwrap();
    let args = ["-c", "a.c", "-o", "no/such/dir/a.o"];
    let alone = run(Command::new("gcc").args(args));
    let through = run(env.cmd(swarmcc()).arg("gcc").args(args));
    assert!(!alone.status.success());
    assert_eq!(through.status.code(), alone.status.code());
    assert_eq!(
        String::from_utf8_lossy(&through.stderr),
        String::from_utf8_lossy(&alone.stderr)
    );
    let s = env.stats_json();
    assert_eq!(s["local_compiles"]["output_not_writable"], 1, "{s}");
    assert_eq!(
        s["local_compiles"]["swarm_failure"],
        serde_json::Value::Null,
        "{s}"
    );
    assert_eq!(s["cache_misses"], 0, "nothing compiled remotely: {s}");

    // A device (`-o /dev/null`; here a null device of the test's own, as
    // root) is written into by the compiler, never replaced by a file.
    let null = d.join("null");
    let c = std::ffi::CString::new(null.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(made, 0, "mknod (the test suite runs as root)");
    let o = run(env.cmd(swarmcc()).args(["gcc", "-c", "a.c", "-o", "null"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&null)
        .unwrap()
        .file_type()
        .is_char_device());
    let s = env.stats_json();
    assert_eq!(s["local_compiles"]["special_output"], 1, "{s}");
    // Nor is a dependency file that goes there (`-MF /dev/null`), on any
    // way a compile takes (a miss, then a direct hit).
    for _ in 0..2 {
        let o = run(env
            .cmd(swarmcc())
            .args(["gcc", "-c", "a.c", "-o", "b.o", "-MD", "-MF", "null"]));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let kind = std::fs::symlink_metadata(&null).unwrap().file_type();
        assert!(kind.is_char_device());
        assert!(d.join("b.o").is_file());
    }
}
