//! `GET /metrics`: the node's counters and the office's figures in the
//! OpenMetrics text format (prometheus-client), built from a snapshot at
//! each scrape, so the numbers are exactly those `swarmcc -s` and
//! `swarmcc status` show.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use swarmcc_protocol::sccache::SchedulerStatusResult;
use swarmcc_protocol::stats::Stats;
use swarmcc_protocol::swarm::OfficeView;

type Labels = Vec<(String, String)>;

fn family<'a>(
    reg: &mut Registry,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a String, &'a u64)>,
) {
    let f = Family::<Labels, Counter>::default();
    for (k, v) in values {
        f.get_or_create(&vec![(label.to_string(), k.clone())])
            .inc_by(*v);
    }
    reg.register(name, help, f);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    reg.register(name, help, g);
}

type Map = std::collections::BTreeMap<String, u64>;
type Count = fn(&Stats) -> u64;
type Figure = fn(&OfficeView, &SchedulerStatusResult) -> u64;

/// The node's counters: name, help, value.
const COUNTERS: &[(&str, &str, Count)] = &[
    (
        "compile_requests",
        "Compile requests seen by this node",
        |s| s.compile_requests,
    ),
    ("cache_hits", "Compiles answered by the cache", |s| {
        s.cache_hits
    }),
    ("cache_misses", "Cache lookups that missed", |s| {
        s.cache_misses
    }),
    (
        "cache_errors",
        "Damaged cache entries found and dropped",
        |s| s.cache_errors,
    ),
    (
        "dist_errors",
        "Distributed compiles that fell back to a local compile",
        |s| s.dist_errors,
    ),
    (
        "jobs_run_for_peers",
        "Jobs this node ran for other nodes",
        |s| s.jobs_run_for_peers,
    ),
    (
        "sandboxes_set_up_ahead",
        "Sandbox runs whose sandbox was set up before the job came",
        |s| s.sandboxes_set_up_ahead,
    ),
    (
        "jobs_reallocated",
        "Jobs given to another builder after one was lost",
        |s| s.jobs_reallocated,
    ),
    (
        "sandbox_limit_hits",
        "Jobs stopped by sandbox limits",
        |s| s.sandbox_limit_hits,
    ),
];

/// Where a family of counters comes from.
enum Source {
    Node(fn(&Stats) -> &Map),
    Office(fn(&OfficeView) -> &Map),
}

/// Counters by label: name, help, label, values.
const FAMILIES: &[(&str, &str, &str, Source)] = &[
    ("dist_compiles", "Compiles run through the swarm, by builder", "builder", Source::Node(|s| &s.dist_compiles)),
    ("local_compiles", "Compiles run locally, by reason", "reason", Source::Node(|s| &s.local_compiles)),
    ("toolchains_fetched", "Toolchains fetched from peers, by peer", "peer", Source::Node(|s| &s.toolchains_fetched)),
    ("refused", "Requests refused, by reason (failures by reason)", "reason", Source::Node(|s| &s.refused_requests)),
    ("transfer_bytes", "Bytes moved between peers, by kind and direction", "kind", Source::Node(|s| &s.transfer_bytes)),
    ("sccache_jobs", "Jobs relayed for sccache clients, by builder", "builder", Source::Node(|s| &s.sccache_jobs)),
    (
        "office_events",
        "Office events seen by this node (allocations, full answers, builder failures, elections, members lost)",
        "event",
        Source::Office(|v| &v.counters),
    ),
    ("peers_rejected", "Peers refused membership, by reason", "reason", Source::Office(|v| &v.rejections)),
];

/// The office's figures now.
const GAUGES: &[(&str, &str, Figure)] = &[
    ("office_builders", "Builders of the office", |_, o| {
        o.num_servers as u64
    }),
    ("office_slots", "Job slots of the office", |_, o| {
        o.num_cpus as u64
    }),
    (
        "office_jobs_in_progress",
        "Jobs running or granted in the office",
        |_, o| o.in_progress as u64,
    ),
    ("office_members", "Members this node sees", |v, _| {
        v.members.len() as u64
    }),
    (
        "coordinator_term",
        "The coordinator's term as this node sees it",
        |v, _| v.term,
    ),
    ("running_jobs", "Jobs this node has taken on now", |v, _| {
        u64::from(v.running_jobs)
    }),
];

/// The text a scrape gets.
pub(crate) fn render(view: &OfficeView, s: &Stats, office: &SchedulerStatusResult) -> String {
    let mut reg = Registry::with_prefix("swarmcc");
    for (name, help, value) in COUNTERS {
        counter(&mut reg, name, help, value(s));
    }
    for (name, help, label, source) in FAMILIES {
        let values = match source {
            Source::Node(f) => f(s),
            Source::Office(f) => f(view),
        };
        family(&mut reg, name, help, label, values);
    }
    for (name, help, value) in GAUGES {
        gauge(&mut reg, name, help, value(view, office));
    }
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_shows_counters_with_labels() {
        let mut s = Stats {
            cache_hits: 5,
            ..Default::default()
        };
        s.dist_compiles.insert("b1".into(), 7);
        s.local_compiles.insert("office_full".into(), 2);
        let mut v = OfficeView::default();
        v.counters.insert("allocations".into(), 9);
        let text = render(
            &v,
            &s,
            &SchedulerStatusResult {
                num_servers: 3,
                num_cpus: 12,
                in_progress: 4,
            },
        );
        for line in [
            "swarmcc_cache_hits_total 5",
            "swarmcc_dist_compiles_total{builder=\"b1\"} 7",
            "swarmcc_local_compiles_total{reason=\"office_full\"} 2",
            "swarmcc_office_events_total{event=\"allocations\"} 9",
            "swarmcc_office_slots 12",
            "swarmcc_office_jobs_in_progress 4",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
