//! Counters shown by `swarmcc --show-stats`. Field names follow sccache's JSON
//! (`compile_requests`, `cache_hits`, `dist_compiles`, `dist_errors`) where the
//! meaning is the same, so existing dashboards keep working.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Why a compile ran locally instead of through the node.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum LocalReason {
    /// Linking, or no `-c`.
    NotCompile,
    /// `-E`, `-M`/`-MM` without compiling, `-S`, `-fsyntax-only`.
    PreprocessOnly,
    MultipleInputs,
    StdinInput,
    UnknownLanguage,
    /// A flag that reads or writes files the job would not carry.
    UnsupportedFlag,
    /// The compiler is not gcc/clang (e.g. rustc) or is configured `no_dist`.
    UnsupportedCompiler,
    /// Local preprocessing failed (its diagnostics are what the user sees).
    PreprocessorFailed,
    /// The node could not be reached or started.
    NodeUnavailable,
    /// The node or sandbox failed; the client compiled locally instead.
    SwarmFailure,
    /// Every builder slot of the office was taken.
    OfficeFull,
    /// The object cannot be written where the user asked (no such
    /// directory, not writable): the user's error, which the compiler
    /// reports; compiled once, locally.
    OutputNotWritable,
    /// The object's path is a device, FIFO or directory (`-o /dev/null`):
    /// the compiler writes into it, and a cached object has no place there.
    SpecialOutput,
    /// An assembler source that reads other files (`.include`, `.incbin`),
    /// which only the assembler itself would find.
    AssemblerInclude,
}

impl LocalReason {
    pub const ALL: [LocalReason; 14] = [
        LocalReason::NotCompile,
        LocalReason::PreprocessOnly,
        LocalReason::MultipleInputs,
        LocalReason::StdinInput,
        LocalReason::UnknownLanguage,
        LocalReason::UnsupportedFlag,
        LocalReason::UnsupportedCompiler,
        LocalReason::PreprocessorFailed,
        LocalReason::NodeUnavailable,
        LocalReason::SwarmFailure,
        LocalReason::OfficeFull,
        LocalReason::OutputNotWritable,
        LocalReason::SpecialOutput,
        LocalReason::AssemblerInclude,
    ];

    /// Human label for `--show-stats`.
    pub fn label(self) -> &'static str {
        match self {
            LocalReason::NotCompile => "not a compile (link or no -c)",
            LocalReason::PreprocessOnly => "preprocess/assemble only (-E/-M/-S)",
            LocalReason::MultipleInputs => "multiple inputs",
            LocalReason::StdinInput => "input from stdin",
            LocalReason::UnknownLanguage => "unknown language",
            LocalReason::UnsupportedFlag => "unsupported flag",
            LocalReason::UnsupportedCompiler => "unsupported compiler",
            LocalReason::PreprocessorFailed => "preprocessor failed",
            LocalReason::NodeUnavailable => "node unavailable",
            LocalReason::SwarmFailure => "swarm failure (fell back)",
            LocalReason::OfficeFull => "office full",
            LocalReason::OutputNotWritable => "output not writable (the user's error)",
            LocalReason::SpecialOutput => "output not a regular file (-o /dev/null)",
            LocalReason::AssemblerInclude => "assembler source reads other files (.include)",
        }
    }

    /// snake_case key for JSON.
    pub fn key(self) -> &'static str {
        match self {
            LocalReason::NotCompile => "not_compile",
            LocalReason::PreprocessOnly => "preprocess_only",
            LocalReason::MultipleInputs => "multiple_inputs",
            LocalReason::StdinInput => "stdin_input",
            LocalReason::UnknownLanguage => "unknown_language",
            LocalReason::UnsupportedFlag => "unsupported_flag",
            LocalReason::UnsupportedCompiler => "unsupported_compiler",
            LocalReason::PreprocessorFailed => "preprocessor_failed",
            LocalReason::NodeUnavailable => "node_unavailable",
            LocalReason::SwarmFailure => "swarm_failure",
            LocalReason::OfficeFull => "office_full",
            LocalReason::OutputNotWritable => "output_not_writable",
            LocalReason::SpecialOutput => "special_output",
            LocalReason::AssemblerInclude => "assembler_include",
        }
    }
}

/// Why a node refused a request: the keys of [`Stats::refused_requests`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A local connection from a user that is neither the node's nor root.
    LocalUser,
    /// An HTTP request addressed to a name the node does not answer to.
    HttpHost,
    /// An sccache client whose token did not verify.
    SccacheAuth,
    /// An sccache client's job that could not run in the swarm.
    SccacheJobFailed,
    /// A toolchain archive that is damaged or hostile.
    ToolchainArchive,
    /// A builder's dependency file that is not what a compiler writes.
    DependencyFile,
    /// A builder that asked for a file the job does not carry.
    UncarriedFile,
    /// A job offered by a peer that is no member.
    JobFromStranger,
    /// A toolchain asked for by a peer that is no member.
    ToolchainForStranger,
    /// Every place for a job or a transfer was taken.
    Busy,
    /// A job offered to a node that does not build.
    NotBuilding,
    GrantForAnotherClient,
    GrantMalformed,
    GrantNotFromCoordinator,
    GrantForged,
    GrantExpired,
    GrantForAnotherBuilder,
    GrantForAnotherJob,
    GrantUsedBefore,
    /// A toolchain relay whose upload fell behind.
    RelayTooSlow,
}

impl Refusal {
    /// How it is shown and counted.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::LocalUser => "local connection of another user",
            Refusal::HttpHost => "HTTP request for another host",
            Refusal::SccacheAuth => "sccache client auth",
            Refusal::SccacheJobFailed => "sccache job failed in the swarm",
            Refusal::ToolchainArchive => "toolchain archive refused",
            Refusal::DependencyFile => "dependency file from a builder",
            Refusal::UncarriedFile => "builder asked for a file the job does not carry",
            Refusal::JobFromStranger => "not a member of this office",
            Refusal::ToolchainForStranger => "toolchain request from a non-member",
            Refusal::Busy => "busy",
            Refusal::NotBuilding => "this node does not build",
            Refusal::GrantForAnotherClient => "grant names another client",
            Refusal::GrantMalformed => "malformed grant",
            Refusal::GrantNotFromCoordinator => "grant not from a coordinator",
            Refusal::GrantForged => "forged grant",
            Refusal::GrantExpired => "expired grant",
            Refusal::GrantForAnotherBuilder => "grant for another builder",
            Refusal::GrantForAnotherJob => "grant for another job",
            Refusal::GrantUsedBefore => "grant used before",
            Refusal::RelayTooSlow => "toolchain relay too slow",
        }
    }
}

/// What moved between peers: the keys of [`Stats::transfer_bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    JobSent,
    JobReceived,
    ToolchainSent,
    ToolchainReceived,
}

impl Transfer {
    pub fn key(self) -> &'static str {
        match self {
            Transfer::JobSent => "job_sent",
            Transfer::JobReceived => "job_received",
            Transfer::ToolchainSent => "toolchain_sent",
            Transfer::ToolchainReceived => "toolchain_received",
        }
    }
}

/// The node's counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub compile_requests: u64,
    pub cache_hits: u64,
    /// Of the cache hits, those answered in direct mode (from a manifest of
    /// the files the unit read, without preprocessing or scanning).
    #[serde(default)]
    pub direct_hits: u64,
    pub cache_misses: u64,
    /// Corrupted or truncated entries found (and dropped) on lookup.
    pub cache_errors: u64,
    /// Successful compiles through the swarm, by builder name.
    pub dist_compiles: BTreeMap<String, u64>,
    /// Distributed compiles that failed and fell back to a local compile.
    pub dist_errors: u64,
    /// Compiles that ended with a non-zero exit code on the builder (user errors).
    pub compile_errors: u64,
    /// Local compiles by reason (key: [`LocalReason::key`]).
    pub local_compiles: BTreeMap<String, u64>,
    /// Toolchains packaged by this node.
    pub toolchains_packaged: u64,
    /// Jobs refused or killed by sandbox limits (time, memory, output).
    pub sandbox_limit_hits: u64,
    /// Compiles run without local preprocessing (carrying what the unit read
    /// last time), proven by the builder's dependency list.
    #[serde(default)]
    pub speculative_compiles: u64,
    /// Such guesses the builder could not prove; redone with preprocessing.
    #[serde(default)]
    pub speculation_misses: u64,
    /// Jobs this node ran for other nodes of its office.
    #[serde(default)]
    pub jobs_run_for_peers: u64,
    /// Sandbox runs that found their sandbox set up ahead, while the node
    /// waited for the job (the builder's slots keep their last job's).
    #[serde(default)]
    pub sandboxes_set_up_ahead: u64,
    /// Jobs given to another builder after one was lost or refused them.
    #[serde(default)]
    pub jobs_reallocated: u64,
    /// Toolchains this node fetched from peers, by the peer's name.
    #[serde(default)]
    pub toolchains_fetched: BTreeMap<String, u64>,
    /// Job offers, toolchain requests and grants this node refused.
    #[serde(default)]
    pub refused_requests: BTreeMap<String, u64>,
    /// Jobs relayed into the swarm for sccache clients, by builder.
    #[serde(default)]
    pub sccache_jobs: BTreeMap<String, u64>,
    /// Toolchain archives sccache clients uploaded to this node.
    #[serde(default)]
    pub sccache_toolchain_uploads: u64,
    /// Bytes moved between peers: `job_sent`, `job_received`,
    /// `toolchain_sent`, `toolchain_received`.
    #[serde(default)]
    pub transfer_bytes: BTreeMap<String, u64>,
}

impl Stats {
    /// Count a refused request.
    pub fn refuse(&mut self, why: Refusal) {
        *self.refused_requests.entry(why.label().into()).or_default() += 1;
    }

    /// Count bytes moved.
    pub fn moved(&mut self, what: Transfer, bytes: u64) {
        *self.transfer_bytes.entry(what.key().into()).or_default() += bytes;
    }
}
