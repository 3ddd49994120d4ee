//! Hosts on a private LAN made of network namespaces, for simulations and
//! benchmarks that need real links: each host is a namespace with one veth
//! (`eth0`, 10.231.S.(10+i)/24) on a bridge that lives in a namespace of its
//! own, so nothing touches the root namespace or the machine's uplink.
//! Links can be limited (tbf), made lossy (nftables) or cut (link down).
//! Everything is removed on drop, also when a test panics; namespaces left
//! by a killed run are swept at the next start.

#![allow(dead_code)]

use std::process::Command;

pub struct Lan {
    prefix: String,
    subnet: u8,
    hosts: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(prog: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why this machine cannot run namespace simulations, if it cannot.
pub fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    for tool in ["ip", "tc", "nft"] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            return Some(format!(
                "{tool} is missing (iproute2 / nftables): run scripts/setup-debian.sh"
            ));
        }
    }
    None
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Remove namespaces of earlier runs whose process is gone.
fn sweep() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("swcc") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if let Ok(pid) = pid.parse::<u32>() {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
}

impl Lan {
    /// `hosts` namespaces on one bridge. Panics with a clear message where
    /// namespaces are unsupported (never passes silently).
    pub fn new(hosts: usize) -> Lan {
        if let Some(why) = unsupported() {
            panic!("network simulation refused: {why}");
        }
        sweep();
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lan = Lan {
            prefix: format!("swcc{pid}-{n}"),
            subnet: (pid % 200) as u8 + 20,
            hosts,
        };
        if let Err(e) = lan.create() {
            drop(lan);
            panic!("creating the namespaces: {e}");
        }
        lan
    }

    fn create(&self) -> Result<(), String> {
        let br = self.bridge_ns();
        ip(&["netns", "add", &br])?;
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 0..self.hosts {
            let ns = self.ns(i);
            ip(&["netns", "add", &ns])?;
            let veth = format!("v{i}");
            ip(&[
                "link", "add", &veth, "netns", &br, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &veth, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &veth, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "multicast", "on", "up"])?;
        }
        Ok(())
    }

    fn bridge_ns(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// Host `i`'s namespace name.
    pub fn ns(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("10.231.{}.{}", self.subnet, 10 + i)
    }

    /// Limit host `i`'s outgoing rate (e.g. "100mbit") with tbf.
    pub fn limit(&self, i: usize, rate: &str) {
        let ns = self.ns(i);
        run(
            "ip",
            &[
                "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
                "rate", rate, "burst", "64kb", "latency", "50ms",
            ],
        )
        .expect("tbf");
    }

    /// Drop `pct` percent of host `i`'s outgoing packets (nftables).
    pub fn loss(&self, i: usize, pct: u32) {
        let ns = self.ns(i);
        let rules = format!(
            "table inet swcc_loss {{ chain out {{ type filter hook output priority 0; numgen random mod 100 < {pct} drop; }}; }}"
        );
        run("ip", &["netns", "exec", &ns, "nft", &rules]).expect("nft");
    }

    /// Split the LAN: hosts in `a` and hosts in `b` drop each other's
    /// packets (nftables in every host), each side still whole.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for (side, other) in [(a, b), (b, a)] {
            let addrs: Vec<String> = other.iter().map(|j| self.addr(*j)).collect();
            let set = addrs.join(", ");
            let rules = format!(
                "table inet swcc_part {{ chain o {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}; \
                 chain i {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}; }}"
            );
            for i in side {
                run("ip", &["netns", "exec", &self.ns(*i), "nft", &rules]).expect("nft partition");
            }
        }
    }

    /// Undo [`Lan::partition`].
    pub fn heal(&self) {
        for i in 0..self.hosts {
            let _ = run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.ns(i),
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    "swcc_part",
                ],
            );
        }
    }

    /// Cut or restore host `i`'s link to the bridge.
    pub fn link(&self, i: usize, up: bool) {
        let br = self.bridge_ns();
        let veth = format!("v{i}");
        ip(&[
            "-n",
            &br,
            "link",
            "set",
            &veth,
            if up { "up" } else { "down" },
        ])
        .expect("link");
    }

    /// A command run inside host `i`'s namespace.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(i)]).arg(program);
        c
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.bridge_ns()]);
    }
}
