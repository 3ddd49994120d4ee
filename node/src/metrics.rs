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

/// The text a scrape gets.
pub fn render(view: &OfficeView, s: &Stats, office: &SchedulerStatusResult) -> String {
    let mut reg = Registry::with_prefix("swarmcc");
    counter(
        &mut reg,
        "compile_requests",
        "Compile requests seen by this node",
        s.compile_requests,
    );
    counter(
        &mut reg,
        "cache_hits",
        "Compiles answered by the cache",
        s.cache_hits,
    );
    counter(
        &mut reg,
        "cache_misses",
        "Cache lookups that missed",
        s.cache_misses,
    );
    counter(
        &mut reg,
        "cache_errors",
        "Damaged cache entries found and dropped",
        s.cache_errors,
    );
    family(
        &mut reg,
        "dist_compiles",
        "Compiles run through the swarm, by builder",
        "builder",
        &s.dist_compiles,
    );
    counter(
        &mut reg,
        "dist_errors",
        "Distributed compiles that fell back to a local compile",
        s.dist_errors,
    );
    family(
        &mut reg,
        "local_compiles",
        "Compiles run locally, by reason",
        "reason",
        &s.local_compiles,
    );
    counter(
        &mut reg,
        "jobs_run_for_peers",
        "Jobs this node ran for other nodes",
        s.jobs_run_for_peers,
    );
    counter(
        &mut reg,
        "sandboxes_set_up_ahead",
        "Sandbox runs whose sandbox was set up before the job came",
        s.sandboxes_set_up_ahead,
    );
    counter(
        &mut reg,
        "jobs_reallocated",
        "Jobs given to another builder after one was lost",
        s.jobs_reallocated,
    );
    counter(
        &mut reg,
        "sandbox_limit_hits",
        "Jobs stopped by sandbox limits",
        s.sandbox_limit_hits,
    );
    family(
        &mut reg,
        "toolchains_fetched",
        "Toolchains fetched from peers, by peer",
        "peer",
        &s.toolchains_fetched,
    );
    family(
        &mut reg,
        "refused",
        "Requests refused, by reason (failures by reason)",
        "reason",
        &s.refused_requests,
    );
    family(
        &mut reg,
        "transfer_bytes",
        "Bytes moved between peers, by kind and direction",
        "kind",
        &s.transfer_bytes,
    );
    family(
        &mut reg,
        "sccache_jobs",
        "Jobs relayed for sccache clients, by builder",
        "builder",
        &s.sccache_jobs,
    );
    family(
        &mut reg,
        "office_events",
        "Office events seen by this node (allocations, full answers, builder failures, elections, members lost)",
        "event",
        &view.counters,
    );
    family(
        &mut reg,
        "peers_rejected",
        "Peers refused membership, by reason",
        "reason",
        &view.rejections,
    );
    gauge(
        &mut reg,
        "office_builders",
        "Builders of the office",
        office.num_servers as u64,
    );
    gauge(
        &mut reg,
        "office_slots",
        "Job slots of the office",
        office.num_cpus as u64,
    );
    gauge(
        &mut reg,
        "office_jobs_in_progress",
        "Jobs running or granted in the office",
        office.in_progress as u64,
    );
    gauge(
        &mut reg,
        "office_members",
        "Members this node sees",
        view.members.len() as u64,
    );
    gauge(
        &mut reg,
        "coordinator_term",
        "The coordinator's term as this node sees it",
        view.term,
    );
    gauge(
        &mut reg,
        "running_jobs",
        "Jobs this node has taken on now",
        u64::from(view.running_jobs),
    );
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
