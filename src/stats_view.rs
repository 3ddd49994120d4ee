//! What `swarmcc --show-stats` (sccache's labels where the meaning is the same)
//! and `swarmcc status` print.

use swarmcc_protocol::stats::{LocalReason, Stats};
use swarmcc_protocol::swarm::OfficeView;

pub fn human(s: &Stats) -> String {
    let mut out = String::new();
    let mut line = |label: &str, v: u64| out.push_str(&format!("{label:<44}{v:>10}\n"));
    line("Compile requests", s.compile_requests);
    line("Cache hits", s.cache_hits);
    line("  in direct mode (no preprocessing)", s.direct_hits);
    line("Cache misses", s.cache_misses);
    line("Cache errors (corrupted entries dropped)", s.cache_errors);
    let dist_total: u64 = s.dist_compiles.values().sum();
    line("Successful distributed compiles", dist_total);
    for (builder, n) in &s.dist_compiles {
        line(&format!("  {builder}"), *n);
    }
    line("Failed distributed compilations", s.dist_errors);
    line("Compilation failures (user errors)", s.compile_errors);
    let local_total: u64 = s.local_compiles.values().sum();
    line("Local compiles", local_total);
    for r in LocalReason::ALL {
        if let Some(n) = s.local_compiles.get(r.key()) {
            line(&format!("  {}", r.label()), *n);
        }
    }
    line(
        "Compiles without local preprocessing",
        s.speculative_compiles,
    );
    line("  guesses redone with preprocessing", s.speculation_misses);
    line("Toolchains packaged", s.toolchains_packaged);
    line("Jobs stopped by sandbox limits", s.sandbox_limit_hits);
    line("Jobs run for other nodes", s.jobs_run_for_peers);
    line(
        "Sandboxes set up before their job came",
        s.sandboxes_set_up_ahead,
    );
    line(
        "Jobs re-allocated after a builder was lost",
        s.jobs_reallocated,
    );
    line(
        "Toolchains fetched from peers",
        s.toolchains_fetched.values().sum(),
    );
    for (peer, n) in &s.toolchains_fetched {
        line(&format!("  from {peer}"), *n);
    }
    let refused: u64 = s.refused_requests.values().sum();
    if refused > 0 {
        line("Requests refused", refused);
        for (why, n) in &s.refused_requests {
            line(&format!("  {why}"), *n);
        }
    }
    out
}

pub fn json(s: &Stats) -> String {
    serde_json::json!({ "stats": s }).to_string()
}

/// `swarmcc status`: the office as the local node sees it.
pub fn office(v: &OfficeView) -> String {
    use std::fmt::Write;
    let mut out = not_building(v);
    let Some(office) = v.office.as_deref() else {
        out.push_str(
            "no [office] configured: this node works alone (see README, \"Office membership\")\n",
        );
        return out;
    };
    let coord = v.coordinator.as_deref().unwrap_or("(none yet)");
    let who = if v.coordinator.as_deref() == Some(v.me.as_str()) {
        " (this node)"
    } else {
        ""
    };
    let _ = writeln!(out, "office:      {office}");
    let _ = writeln!(out, "this node:   {} ({})", v.name, v.me);
    let _ = writeln!(out, "coordinator: {coord}{who}, term {}", v.term);
    let _ = writeln!(
        out,
        "capacity:    {} builders, {} job slots, {} jobs in progress",
        v.builders, v.cores, v.in_progress
    );
    let _ = writeln!(out, "figures:     from {}", v.figures_from);
    let _ = writeln!(
        out,
        "{:<20} {:<20} {:>5} {:>5} {:>5} {:>9}  peer",
        "name", "role", "cores", "jobs", "tools", "seen(ms)"
    );
    let mine = if v.builds {
        "(this node)"
    } else {
        "(this node, client)"
    };
    let _ = writeln!(
        out,
        "{:<20} {:<20} {:>5} {:>5} {:>5} {:>9}  {}",
        v.name, mine, "", v.running_jobs, "", 0, v.me
    );
    for m in &v.members {
        let _ = writeln!(
            out,
            "{:<20} {:<20} {:>5} {:>5} {:>5} {:>9}  {}",
            m.name, m.role, m.cores, m.running_jobs, m.toolchains, m.last_seen_ms, m.peer
        );
    }
    for (why, n) in &v.rejections {
        let _ = writeln!(out, "rejected: {n} × {why}");
    }
    out
}

/// A line saying why this node does not build, if it does not (empty
/// otherwise): a node without a usable sandbox says so where people look,
/// not only in its log.
pub fn not_building(v: &OfficeView) -> String {
    match &v.cannot_build {
        Some(why) => format!("this node does not build: {why}\n"),
        None => String::new(),
    }
}
