//! The compiler wrapper: `swarmcc gcc -c a.c -o a.o`.
//!
//! Preprocess locally, look the result up in the node's cache, otherwise
//! hand the node a self-contained job and write back what it returns. Any
//! failure of that path (node down, sandbox limit, lost connection) ends in
//! a plain local compile, so the swarm never fails a build that the compiler
//! alone would pass. A compile *error* from the builder is the user's and is
//! reported as is.

use crate::args::{self, Compile, Kind};
use crate::client::NodeClient;
use crate::fileinfo::{File, FileInfo};
use crate::scan;
use crate::sources;
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use swarmcc_node::config::{Config, CustomToolchain};
use swarmcc_protocol::job::Blob;
use swarmcc_protocol::local::{Manifest, Request, Response, ToolchainInfo, ToolchainSpec};
use swarmcc_protocol::stats::LocalReason;
use swarmcc_protocol::{Hash32, Job, JobResult, PreprocessCheck, SourceRef};

/// Names under which a symlink to swarmcc acts as that compiler.
pub const COMPILER_NAMES: &[&str] = &["cc", "c++", "gcc", "g++", "clang", "clang++"];

/// Entry point: never returns.
pub fn main(compiler: &str, args: Vec<String>) -> ! {
    let real = match find_compiler(compiler) {
        Some(p) => p,
        None => {
            eprintln!("swarmcc: compiler {compiler:?} not found on PATH");
            std::process::exit(127);
        }
    };
    let cfg = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("swarmcc: {e:#}; compiling locally");
            exec_local(&real, &args);
        }
    };
    match try_distribute(&cfg, &real, &args) {
        Ok(code) => std::process::exit(code),
        Err(Fallback { reason, why, node }) => {
            if let Some(why) = why {
                tracing::info!("compiling locally ({}): {why:#}", reason.label());
            }
            record_local(&cfg, reason, node);
            exec_local(&real, &args);
        }
    }
}

/// Why and how a compile goes local.
struct Fallback {
    reason: LocalReason,
    why: Option<anyhow::Error>,
    node: Option<NodeClient>,
}

fn fallback(reason: LocalReason) -> impl FnOnce(anyhow::Error) -> Fallback {
    move |e| Fallback {
        reason,
        why: Some(e),
        node: None,
    }
}

fn record_local(cfg: &Config, reason: LocalReason, node: Option<NodeClient>) {
    if reason == LocalReason::NodeUnavailable {
        return;
    }
    // Counting is best effort: never start a node just to count.
    if let Some(mut c) = node.or_else(|| NodeClient::connect(cfg).ok()) {
        let _ = c.call(&Request::RecordLocal { reason });
    }
}

fn exec_local(compiler: &Path, args: &[String]) -> ! {
    let err = Command::new(compiler).args(args).exec();
    eprintln!("swarmcc: cannot run {}: {err}", compiler.display());
    std::process::exit(127);
}

/// Resolve the real compiler: a path as given, or a name on PATH that is not
/// swarmcc itself (so that a `gcc -> swarmcc` symlink earlier on PATH works).
pub fn find_compiler(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p
            .is_file()
            .then(|| std::fs::canonicalize(&p).ok().map(|_| absolutize(&p)))
            .flatten();
    }
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| std::fs::canonicalize(p).ok());
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            let ok = p
                .metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            ok && std::fs::canonicalize(p).ok() != me
        })
}

fn absolutize(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// What kind of compiler a path is, by name (`cc`/`c++` are gcc on Linux
/// unless their name says clang).
fn kind_of(compiler: &Path) -> Option<Kind> {
    let name = compiler.file_name()?.to_str()?;
    if name.contains("clang") {
        Some(Kind::Clang)
    } else if name == "cc" || name == "c++" || name.contains("gcc") || name.contains("g++") {
        Some(Kind::Gcc)
    } else {
        None
    }
}

/// The logical working directory: `$PWD` when it names the current
/// directory (as gcc itself prefers for DW_AT_comp_dir), else the physical one.
fn logical_cwd() -> Result<PathBuf> {
    let phys = std::env::current_dir()?;
    if let Some(pwd) = std::env::var_os("PWD").map(PathBuf::from) {
        if pwd.is_absolute() {
            use std::os::unix::fs::MetadataExt;
            if let (Ok(a), Ok(b)) = (std::fs::metadata(&pwd), std::fs::metadata(&phys)) {
                if a.dev() == b.dev() && a.ino() == b.ino() {
                    return Ok(pwd);
                }
            }
        }
    }
    Ok(phys)
}

/// The environment a job sees: only what changes the compiler's output.
/// Locales are mapped to the built-in C/C.UTF-8 so that quoting matches
/// (English messages; translated messages are not carried).
fn job_env(compiler: &str) -> Vec<(String, String)> {
    let dir = Path::new(compiler)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut env = vec![
        ("PATH".to_string(), format!("{dir}:/usr/bin:/bin")),
        ("TMPDIR".into(), "/tmp".into()),
    ];
    for var in ["LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES"] {
        if let Ok(v) = std::env::var(var) {
            let lower = v.to_ascii_lowercase();
            let mapped = if lower.ends_with("utf-8") || lower.ends_with("utf8") {
                "C.UTF-8"
            } else {
                "C"
            };
            env.push((var.to_string(), mapped.to_string()));
        }
    }
    for var in ["SOURCE_DATE_EPOCH", "GCC_COLORS"] {
        if let Ok(v) = std::env::var(var) {
            env.push((var.to_string(), v));
        }
    }
    env
}

fn try_distribute(cfg: &Config, compiler: &Path, raw_args: &[String]) -> Result<i32, Fallback> {
    let local = |reason| Fallback {
        reason,
        why: None,
        node: None,
    };
    let kind = kind_of(compiler).ok_or_else(|| local(LocalReason::UnsupportedCompiler))?;
    let custom = cfg.custom_toolchain(compiler);
    if matches!(custom, Some(CustomToolchain::NoDist { .. })) {
        return Err(local(LocalReason::UnsupportedCompiler));
    }
    // Everything below trusts the state directory (the node's socket,
    // remembered hashes): it must be this user's own.
    swarmcc_node::ownership::own_dir(&cfg.state).map_err(fallback(LocalReason::SwarmFailure))?;
    let cwd = logical_cwd().map_err(fallback(LocalReason::SwarmFailure))?;
    let args = args::expand_response_files(raw_args, &cwd)
        .map_err(|_| local(LocalReason::UnsupportedFlag))?;
    let compile = args::parse(kind, &args).map_err(local)?;
    let mut node =
        NodeClient::connect_or_start(cfg).map_err(fallback(LocalReason::NodeUnavailable))?;
    let on_node = |reason| {
        move |e: anyhow::Error| Fallback {
            reason,
            why: Some(e),
            node: None,
        }
    };

    // 1. Toolchain (packaged by the node once per compiler).
    let spec = match custom {
        Some(CustomToolchain::PathOverride {
            archive,
            archive_compiler_executable,
            ..
        }) => ToolchainSpec::Archive {
            archive: archive.to_string_lossy().into_owned(),
            compiler: archive_compiler_executable.clone(),
        },
        _ => ToolchainSpec::Local {
            compiler: compiler.to_string_lossy().into_owned(),
        },
    };
    let spec_is_local = matches!(spec, ToolchainSpec::Local { .. });
    // With the toolchain the node named last time, the direct-mode lookup
    // goes along with the question (see `last_toolchain`); its answer
    // counts only if the node names that toolchain again.
    let direct = cfg.cache.enabled && cfg.cache.direct;
    let last_dir = cfg.state.join("last-toolchain");
    let last = direct
        .then(|| crate::last_toolchain::recall(&last_dir, &spec))
        .flatten();
    // (Before the source is first read: see `manifest_for`.)
    let started = std::time::SystemTime::now();
    let early_keys = last.as_ref().and_then(|t| direct_keys(t, &compile, &cwd));
    let asked = match early_keys {
        Some((key, hint)) => node
            .call_two(
                &Request::Toolchain(spec.clone()),
                &Request::DirectGet { key, hint },
            )
            .map(|(t, d)| (t, Some(d))),
        None => node
            .call(&Request::Toolchain(spec.clone()))
            .map(|t| (t, None)),
    };
    let (answer, mut early) = match asked {
        Ok(a) => a,
        Err(e) => return Err(on_node(LocalReason::SwarmFailure)(e)),
    };
    let tc = match answer {
        Response::Toolchain(info) => info,
        Response::Error(e) => {
            return Err(Fallback {
                reason: LocalReason::SwarmFailure,
                why: Some(anyhow!(e)),
                node: Some(node),
            })
        }
        other => {
            return Err(on_node(LocalReason::SwarmFailure)(anyhow!(
                "unexpected {other:?}"
            )))
        }
    };
    if last.as_ref() != Some(&tc) {
        early = None;
        if direct {
            crate::last_toolchain::remember(&last_dir, &spec, &tc);
        }
    }

    // 2. Direct mode: answer from what an earlier identical compile read,
    //    hashing those files instead of running the preprocessor.
    let keys = match early_keys {
        Some(k) if early.is_some() => Some(k),
        _ if direct => direct_keys(&tc, &compile, &cwd),
        _ => None,
    };
    if let Some((dk, hint)) = keys {
        let mut info = FileInfo::load(
            &cfg.state.join("file-info"),
            format!("{}\0{}", tc.id, cwd.display()).as_bytes(),
        );
        let answer = match early.take() {
            Some(a) => Ok(a),
            None => node.call(&Request::DirectGet { key: dk, hint }),
        };
        let hinted = match answer {
            Ok(Response::DirectHit { manifest, result })
                if manifest_still_holds(&manifest, &mut info) =>
            {
                let dep_ok = match &manifest.dep_file {
                    Some((path, bytes)) => write_output(&cwd.join(path), bytes).is_ok(),
                    None => true,
                };
                if dep_ok {
                    if let Ok(code) = deliver(&compile, &cwd, &job_output(&compile, &cwd), &result)
                    {
                        return Ok(code);
                    }
                }
                None
            }
            Ok(Response::Hint(guess)) => Some(guess),
            _ => None,
        };
        // Skip local preprocessing: send a guess of what the unit reads and
        // let the builder prove it (only for toolchains packaged from this
        // machine, whose files the client has as well).
        if spec_is_local {
            if let Some(files) = guess(cfg, compiler, &tc, &compile, &cwd, hinted, &mut info) {
                let spec = Speculation {
                    kind,
                    tc: &tc,
                    compile: &compile,
                    cwd: &cwd,
                    files,
                    keys: (dk, hint),
                    started,
                };
                if let Some(code) = speculate(&mut node, spec) {
                    return Ok(code);
                }
            }
        }
    }

    // 3. Preprocess locally (this also writes the dependency file).
    let rewrite = cfg.dist.rewrite_includes_only && compile.lang != args::Lang::AsmCpp;
    let pp_args = preprocess_args(kind, &compile, rewrite);
    let pp = match preprocess(compiler, &pp_args, &compile.deps) {
        Ok(pp) => pp,
        Err(e) => {
            return Err(Fallback {
                reason: LocalReason::PreprocessorFailed,
                why: Some(e),
                node: Some(node),
            })
        }
    };

    // 4. The files the compile reads: the source and every header.
    let mut srcs = Vec::new();
    let mut blobs = Vec::new();
    for name in sources::line_marker_files(&pp.stdout) {
        let abs = sources::absolute(&cwd, &name);
        if let Ok(data) = std::fs::read(&abs) {
            let hash = Hash32::of(&data);
            srcs.push(SourceRef {
                path: abs.to_string_lossy().into_owned(),
                hash,
            });
            blobs.push(Blob { hash, data });
        }
    }

    // 5. The job, and its cache key.
    let check = PreprocessCheck {
        args: pp_args,
        expect: Hash32::of(&pp.stdout),
        always: cfg.dist.strict_inputs,
    };
    let job = build_job(&tc, &compile, &cwd, Some(check), srcs, &[]);
    let key = cache_key(&job);
    let want = job_output(&compile, &cwd);
    let remember = |node: &mut NodeClient| {
        if let Some((dk, hint)) = keys {
            let clock = blobs.iter().any(|b| names_the_clock(&b.data));
            if let Some(manifest) = manifest_for(&compile, &cwd, &job, clock, key, started) {
                let _ = node.call(&Request::PutManifest {
                    key: dk,
                    hint,
                    manifest,
                });
            }
        }
    };
    let hashes = blobs.iter().map(|b| b.hash).collect();
    let (cached, missing) = match node.call_two(&Request::CacheGet { key }, &missing_query(hashes))
    {
        Ok(r) => r,
        Err(e) => return Err(on_node(LocalReason::SwarmFailure)(e)),
    };
    if let Response::CacheHit(result) = cached {
        if let Ok(code) = deliver(&compile, &cwd, &want, &result) {
            remember(&mut node);
            return Ok(code);
        }
    }
    let to_send = unsent(&blobs, missing);
    let resp = node.call(&Request::Compile {
        key: Some(key),
        job: Box::new(job.clone()),
        blobs: to_send,
    });
    match resp {
        Ok(Response::Compiled { result, .. }) => match deliver(&compile, &cwd, &want, &result) {
            Ok(code) => {
                if code == 0 {
                    remember(&mut node);
                }
                Ok(code)
            }
            Err(e) => Err(Fallback {
                reason: LocalReason::SwarmFailure,
                why: Some(e),
                node: Some(node),
            }),
        },
        Ok(Response::Error(e)) => Err(Fallback {
            reason: LocalReason::SwarmFailure,
            why: Some(anyhow!(e)),
            node: Some(node),
        }),
        Ok(Response::Full) => Err(Fallback {
            reason: LocalReason::OfficeFull,
            why: None,
            node: Some(node),
        }),
        Ok(other) => Err(Fallback {
            reason: LocalReason::SwarmFailure,
            why: Some(anyhow!("unexpected {other:?}")),
            node: Some(node),
        }),
        Err(e) => Err(on_node(LocalReason::SwarmFailure)(e)),
    }
}

struct Preprocessed {
    stdout: Vec<u8>,
}

/// The client's preprocessing command (without dependency flags): the same
/// arguments run in the sandbox must give the same bytes.
fn preprocess_args(kind: Kind, c: &Compile, rewrite: bool) -> Vec<String> {
    let mut v = c.base.clone();
    v.push("-E".into());
    if rewrite {
        v.push(match kind {
            Kind::Gcc => "-fdirectives-only".into(),
            Kind::Clang => "-frewrite-includes".into(),
        });
    }
    v
}

fn preprocess(compiler: &Path, args: &[String], deps: &[String]) -> Result<Preprocessed> {
    let out = Command::new(compiler)
        .args(args)
        .args(deps)
        .stdin(Stdio::null())
        .output()
        .context("running the preprocessor")?;
    if !out.status.success() {
        bail!("preprocessor exited with {}", out.status);
    }
    Ok(Preprocessed { stdout: out.stdout })
}

/// The directory inside the job's cwd that receives the job's object.
const JOB_DIR: &str = ".swarmcc-job";

/// The job for a compile: the user's arguments, writing the object and a
/// dependency list (the builder's proof of what was read) into the job's
/// directory. `dep_flags` are the user's dependency flags, redirected there:
/// none for a checked job (the client's preprocessing wrote the user's file),
/// the user's own for a speculative one, whose dependency file then comes back
/// as a second output.
fn build_job(
    tc: &ToolchainInfo,
    c: &Compile,
    cwd: &Path,
    check: Option<PreprocessCheck>,
    sources: Vec<SourceRef>,
    dep_flags: &[String],
) -> Job {
    let stem = Path::new(&c.input)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("input");
    let deps = format!("{}/{JOB_DIR}/{stem}.deps", cwd.to_string_lossy());
    let output = job_output(c, cwd);
    let mut args = c.base.clone();
    args.extend(["-c".into(), "-o".into(), output.clone()]);
    args.extend(redirect_dep_file(dep_flags, &deps));
    let mut outputs = vec![output];
    if !dep_flags.is_empty() {
        outputs.push(deps.clone());
    }
    Job {
        toolchain: tc.id,
        compiler: tc.compiler.clone(),
        cwd: cwd.to_string_lossy().into_owned(),
        env: job_env(&tc.compiler),
        sources,
        check,
        deps_file: Some(deps),
        args,
        outputs,
    }
}

/// Which of these contents the node lacks: asked with the cache lookup, so
/// that a miss needs no round trip of its own before the compile.
fn missing_query(hashes: Vec<Hash32>) -> Request {
    Request::MissingBlobs { hashes }
}

/// Which contents the node lacks, from its answer to [`missing_query`] (all
/// of `hashes` if it could not say).
fn lacking(
    answer: Response,
    hashes: impl IntoIterator<Item = Hash32>,
) -> std::collections::HashSet<Hash32> {
    match answer {
        Response::Missing(missing) => missing.into_iter().collect(),
        _ => hashes.into_iter().collect(),
    }
}

/// Only the blobs the node does not hold yet, from its answer to
/// [`missing_query`] (all of them if it could not say).
fn unsent(blobs: &[Blob], answer: Response) -> Vec<Blob> {
    let missing = lacking(answer, blobs.iter().map(|b| b.hash));
    blobs
        .iter()
        .filter(|b| missing.contains(&b.hash))
        .cloned()
        .collect()
}

/// Where the builder writes the object (inside the job's own directory).
fn job_output(c: &Compile, cwd: &Path) -> String {
    let stem = Path::new(&c.input)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("input");
    format!("{}/{JOB_DIR}/{stem}.o", cwd.to_string_lossy())
}

/// Direct mode's keys: everything but the headers (which the manifest
/// lists), and the same without the source's content (the unit's "hint").
fn direct_keys(tc: &ToolchainInfo, c: &Compile, cwd: &Path) -> Option<(Hash32, Hash32)> {
    let source = std::fs::read(cwd.join(&c.input)).ok()?;
    let meta = (
        &tc.id,
        &tc.compiler,
        cwd.to_string_lossy(),
        job_env(&tc.compiler),
        &c.base,
        &c.deps,
        &c.output,
        &c.input,
    );
    let meta = swarmcc_protocol::frame::encode(&meta).ok()?;
    let mut hint = blake3::Hasher::new();
    hint.update(b"swarmcc-hint-key-v1\0");
    hint.update(&meta);
    let mut key = blake3::Hasher::new();
    key.update(b"swarmcc-direct-key-v1\0");
    key.update(&meta);
    key.update(Hash32::of(&source).0.as_slice());
    Some((Hash32::from(key.finalize()), Hash32::from(hint.finalize())))
}

/// The files a compile will read, guessed without preprocessing: by
/// following its includes (see [`scan`]), else what the same unit read last
/// time (`hint`, the manifest of its previous compile). None with
/// `strict_inputs`, which asks for the preprocessing check on every job.
fn guess(
    cfg: &Config,
    compiler: &Path,
    tc: &ToolchainInfo,
    c: &Compile,
    cwd: &Path,
    hint: Option<Manifest>,
    info: &mut FileInfo,
) -> Option<Vec<File>> {
    if cfg.dist.strict_inputs {
        return None;
    }
    if cfg.dist.scan_includes && scan::applicable(c) {
        let env = job_env(&tc.compiler);
        let probes = cfg.state.join("include-paths");
        if let Some(files) = scan::search_path(compiler, &tc.id.to_string(), c, cwd, &env, &probes)
            .and_then(|sp| scan::scan(c, cwd, &sp, info))
        {
            return Some(files);
        }
    }
    hint?
        .files
        .into_iter()
        .map(|f| info.file(Path::new(&f.path)))
        .collect()
}

/// A speculative compile: see [`speculate`].
struct Speculation<'a> {
    kind: Kind,
    tc: &'a ToolchainInfo,
    compile: &'a Compile,
    cwd: &'a Path,
    /// The guessed files.
    files: Vec<File>,
    keys: (Hash32, Hash32),
    started: std::time::SystemTime,
}

/// Compile without local preprocessing, carrying a guess of the files the
/// unit reads. The builder's own dependency list must prove the guess, so
/// `None` (an unproven guess, a compile error, any failure) only means "do it
/// the checked way"; it never reaches the user.
fn speculate(node: &mut NodeClient, sp: Speculation<'_>) -> Option<i32> {
    let (c, cwd) = (sp.compile, sp.cwd);
    let mut files = sp.files;
    let sources = files
        .iter()
        .map(|f| {
            Some(SourceRef {
                path: f.path.to_str()?.to_string(),
                hash: f.hash,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let job = build_job(sp.tc, c, cwd, None, sources, &c.deps);
    let output = job_output(c, cwd);
    let key = cache_key(&job);
    let hashes = files.iter().map(|f| f.hash).collect();
    let (cached, missing) = node
        .call_two(&Request::CacheGet { key }, &missing_query(hashes))
        .ok()?;
    let result = match cached {
        Response::CacheHit(r) => r,
        _ => {
            // Only what the node lacks is read (if not read yet) and sent.
            let mut missing = lacking(missing, files.iter().map(|f| f.hash));
            let mut to_send = Vec::new();
            for f in &mut files {
                if missing.remove(&f.hash) {
                    let data = f.take_data()?;
                    to_send.push(Blob { hash: f.hash, data });
                }
            }
            let req = Request::Compile {
                key: Some(key),
                job: Box::new(job.clone()),
                blobs: to_send,
            };
            match node.call(&req).ok()? {
                Response::Compiled { result, .. } if result.exit_code == 0 => result,
                _ => return None,
            }
        }
    };
    if let Some(user_dep) = dep_file_path(&c.deps) {
        // The builder wrote it: the next `make` reads it as makefile text,
        // so only what the compiler itself writes for these files and
        // these targets is taken (else: the checked way).
        let deps_out = job.deps_file.as_ref()?;
        let (_, bytes) = result.outputs.iter().find(|(p, _)| p == deps_out)?;
        let same = |w: &str, c: &str| swarmcc_node::util::same_file(&job.cwd, w, c);
        if let Err(e) = job.check_deps(bytes, Some(&c.dep_targets(sp.kind)), same) {
            tracing::warn!("dependency file from the builder refused: {e}");
            return None;
        }
        write_output(&cwd.join(user_dep), bytes).ok()?;
    }
    let code = deliver(c, cwd, &output, &result).ok()?;
    let clock = files.iter().any(|f| f.clock);
    if let Some(manifest) = manifest_for(c, cwd, &job, clock, key, sp.started) {
        let _ = node.call(&Request::PutManifest {
            key: sp.keys.0,
            hint: sp.keys.1,
            manifest,
        });
    }
    Some(code)
}

/// The user's dependency flags writing to `dest` instead (or `-MD -MF dest`
/// when there are none), so the builder's compile writes the very file a
/// local compile would, and its list of what was read.
fn redirect_dep_file(deps: &[String], dest: &str) -> Vec<String> {
    if deps.is_empty() {
        return vec!["-MD".into(), "-MF".into(), dest.into()];
    }
    let mut out = Vec::with_capacity(deps.len());
    let mut it = deps.iter();
    while let Some(a) = it.next() {
        if a == "-MF" {
            it.next();
            out.extend(["-MF".to_string(), dest.to_string()]);
        } else if a.starts_with("-MF") {
            out.extend(["-MF".to_string(), dest.to_string()]);
        } else if let Some(rest) = a.strip_prefix("-Wp,") {
            // Keep the preprocessor-level form: it names its target itself.
            let flag = if rest.starts_with("-MMD,") {
                "-MMD"
            } else {
                "-MD"
            };
            out.push(format!("-Wp,{flag},{dest}"));
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// Whether a file names `__DATE__`, `__TIME__` or `__TIMESTAMP__` (two
/// passes over it, not three: every `__TIME` is checked for the rest; glibc
/// names `__TIME_T_TYPE` and `__TIMESIZE`, which do not count).
pub(crate) fn names_the_clock(data: &[u8]) -> bool {
    use std::sync::LazyLock;
    static DATE: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"__DATE__"));
    static TIME: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"__TIME"));
    DATE.find(data).is_some()
        || TIME.find_iter(data).any(|at| {
            let rest = &data[at + b"__TIME".len()..];
            rest.starts_with(b"__") || rest.starts_with(b"STAMP__")
        })
}

/// Whether every file a manifest lists still has the content it had.
fn manifest_still_holds(m: &Manifest, info: &mut FileInfo) -> bool {
    !m.files.is_empty()
        && m.files.iter().all(|f| {
            info.file(Path::new(&f.path))
                .is_some_and(|g| g.hash == f.hash)
        })
}

/// The manifest of a finished compile, unless direct mode cannot vouch for
/// it (as ccache: a file uses `__DATE__`/`__TIME__`/`__TIMESTAMP__`, told
/// by `clock`, or was modified after the compile started).
fn manifest_for(
    c: &Compile,
    cwd: &Path,
    job: &Job,
    clock: bool,
    result_key: Hash32,
    started: std::time::SystemTime,
) -> Option<Manifest> {
    if clock {
        return None;
    }
    for f in &job.sources {
        let m = std::fs::metadata(&f.path).ok()?;
        if m.modified().ok()? >= started {
            return None;
        }
    }
    let dep_file = match dep_file_path(&c.deps) {
        Some(p) => Some((p.clone(), std::fs::read(cwd.join(&p)).ok()?)),
        None => None,
    };
    Some(Manifest {
        files: job.sources.clone(),
        result_key,
        dep_file,
    })
}

/// The dependency file the flags name (`-MF f`, `-MFf`, `-Wp,-MD,f`).
fn dep_file_path(deps: &[String]) -> Option<String> {
    let mut it = deps.iter();
    while let Some(a) = it.next() {
        if a == "-MF" {
            return it.next().cloned();
        }
        if let Some(p) = a.strip_prefix("-MF") {
            return Some(p.to_string());
        }
        if let Some(p) = a
            .strip_prefix("-Wp,-MD,")
            .or_else(|| a.strip_prefix("-Wp,-MMD,"))
        {
            return Some(p.to_string());
        }
    }
    None
}

/// Everything that decides a job's result, hashed.
pub fn cache_key(job: &Job) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(b"swarmcc-cache-key-v1\0");
    // The check's hash covers the preprocessed text; the sources cover what
    // diagnostics quote (comments, whitespace) that preprocessing drops.
    let meta = (
        &job.toolchain,
        &job.compiler,
        &job.cwd,
        &job.env,
        &job.check,
        &job.args,
        &job.outputs,
        &job.sources,
    );
    h.update(&swarmcc_protocol::frame::encode(&meta).unwrap_or_default());
    Hash32::from(h.finalize())
}

/// Write the object where the user asked for it, print the compiler's
/// output, and give its exit code.
fn deliver(c: &Compile, cwd: &Path, want: &str, r: &JobResult) -> Result<i32> {
    if r.exit_code == 0 {
        let data = r
            .outputs
            .iter()
            .find(|(p, _)| p == want)
            .map(|(_, d)| d)
            .ok_or_else(|| anyhow!("the builder returned no object"))?;
        let dest = cwd.join(&c.output);
        write_output(&dest, data).with_context(|| format!("writing {}", dest.display()))?;
    } else {
        // gcc removes its output when a compile fails; so do we.
        let _ = std::fs::remove_file(cwd.join(&c.output));
    }
    // The builder compiled the real sources, so its stderr already holds the
    // preprocessor's diagnostics (#warning) in their place; the client's own
    // preprocessing output is not printed.
    let _ = std::io::stderr().lock().write_all(&r.stderr);
    let _ = std::io::stdout().lock().write_all(&r.stdout);
    Ok(r.exit_code)
}

/// Keep `data` as `name` in `dir`, a directory of files kept between runs,
/// atomically and best effort; a new file that would take the directory
/// past `max` files empties it first.
pub(crate) fn keep_file(dir: &Path, name: impl AsRef<Path>, data: &[u8], max: usize) {
    use std::os::unix::fs::DirBuilderExt;
    let make = || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    };
    if make().is_err() {
        return;
    }
    let file = dir.join(name);
    if !file.exists() && std::fs::read_dir(dir).is_ok_and(|d| d.count() > max) {
        let _ = std::fs::remove_dir_all(dir);
        let _ = make();
    }
    let _ = write_atomic(&file, data);
}

/// Write a compile's output (object, dependency file) where the user asked
/// for it: written aside, then renamed into place. The old file goes first:
/// ext4 (auto_da_alloc) writes a file renamed over another out to disk at
/// once, and the rename waits for it. A build stopped in between finds no
/// output and rebuilds it, as after a compile stopped half-way.
fn write_output(dest: &Path, data: &[u8]) -> Result<()> {
    write_aside_then_rename(dest, data, true)
}

/// Replace `dest` atomically: a reader sees the old file or the new one.
fn write_atomic(dest: &Path, data: &[u8]) -> Result<()> {
    write_aside_then_rename(dest, data, false)
}

fn write_aside_then_rename(dest: &Path, data: &[u8], remove_first: bool) -> Result<()> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .ok_or_else(|| anyhow!("bad output path"))?
        .to_string_lossy();
    let (tmp, mut f) = create_aside(dir, &name)?;
    if let Err(e) = f.write_all(data) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    drop(f);
    if remove_first {
        let _ = std::fs::remove_file(dest);
    }
    if let Err(e) = std::fs::rename(&tmp, dest) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}

/// A new file beside `name` in `dir`, made by this process (`O_EXCL`, no
/// symlink followed): an output directory may be one other users can
/// write to, and a name they guessed (the pid) may be waiting there.
fn create_aside(dir: &Path, name: &str) -> Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut last = None;
    for n in 0..8u32 {
        let tmp = dir.join(format!(".{name}.swarmcc-{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or_else(|| anyhow!("no temporary name"), Into::into))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_is_never_written_through_a_name_planted_beside_it() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let out = t.path().join("a.o");
        // What another user could leave in a shared output directory: the
        // names the next compiles of this process would write aside to.
        for n in 0..3 {
            let planted = t
                .path()
                .join(format!(".a.o.swarmcc-{}-{n}", std::process::id()));
            std::os::unix::fs::symlink(&victim, planted).unwrap();
        }
        write_output(&out, b"object").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"object");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&out)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn outputs_and_kept_files_replace_old_files_and_leave_nothing_else() {
        for write in [write_output, write_atomic] {
            let t = tempfile::tempdir().unwrap();
            let out = t.path().join("a.o");
            write(&out, b"first").unwrap();
            write(&out, b"second").unwrap();
            assert_eq!(std::fs::read(&out).unwrap(), b"second");
            // A directory in the way is an error, and is left as it was.
            std::fs::create_dir(t.path().join("d.o")).unwrap();
            assert!(write(&t.path().join("d.o"), b"x").is_err());
            assert!(t.path().join("d.o").is_dir());
            let names: Vec<_> = std::fs::read_dir(t.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        }
    }

    #[test]
    fn clock_names_are_told_from_lookalikes() {
        assert!(names_the_clock(b"x = __DATE__;"));
        assert!(names_the_clock(b"x = __TIME__;"));
        assert!(names_the_clock(b"x = __TIMESTAMP__;"));
        assert!(names_the_clock(b"__TIME_T_TYPE __TIMESIZE then __TIME__"));
        assert!(!names_the_clock(
            b"#define __TIME_T_TYPE long\n#if __TIMESIZE == 64\n"
        ));
        assert!(!names_the_clock(b"__TIME"));
        assert!(!names_the_clock(b""));
    }
}
