//! The wrapper's connection to its local node: blocking, one request at a
//! time, and started on demand like sccache's server.

use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use swarmcc_node::config::Config;
use swarmcc_protocol::frame::{self, LOCAL_FRAME_MAX};
use swarmcc_protocol::local::{Request, Response, LOCAL_PROTOCOL_VERSION};

pub struct NodeClient {
    stream: UnixStream,
    /// The greeting's answer is not yet read: it is read with the first
    /// call's, so that a compile does not wait a round trip for it.
    hello_pending: bool,
    /// Requests not yet sent: whatever a call asks goes out in one write
    /// (the greeting with the first), waking the node once.
    outbox: Vec<u8>,
}

impl NodeClient {
    /// Connect to a running node. The greeting (protocol version) is
    /// checked with the first call's answer.
    pub fn connect(cfg: &Config) -> Result<NodeClient> {
        let sock = cfg.socket_path();
        let stream = UnixStream::connect(&sock)
            .with_context(|| format!("connecting to {}", sock.display()))?;
        // The node gets the sources and answers with objects: it must be
        // this user's own (or root's), wherever its socket is configured.
        let peer = swarmcc_node::ownership::peer_uid(&stream)?;
        let me = swarmcc_node::ownership::euid();
        if peer != me && peer != 0 {
            bail!(
                "{} is served by uid {peer}, not by this user's node (uid {me})",
                sock.display()
            );
        }
        let mut client = NodeClient {
            stream,
            hello_pending: true,
            outbox: Vec::new(),
        };
        client.send(&Request::Hello {
            version: LOCAL_PROTOCOL_VERSION,
        })?;
        Ok(client)
    }

    /// Connect, starting a node in the background if none is running. A
    /// node that runs (it holds the state dir's lock) but has no socket yet
    /// is starting, or makes its socket again within a second: it is waited
    /// for, and no second node is started only to be told one runs.
    pub fn connect_or_start(cfg: &Config) -> Result<NodeClient> {
        if let Ok(c) = Self::connect(cfg) {
            return Ok(c);
        }
        if !node_holds_lock(cfg) {
            start_node(cfg)?;
        }
        let deadline = Instant::now() + Duration::from_secs(cfg.node.start_timeout_secs);
        let mut last = anyhow!("node did not start");
        while Instant::now() < deadline {
            match Self::connect(cfg) {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(last.context("starting the node"))
    }

    pub fn call(&mut self, req: &Request) -> Result<Response> {
        self.send(req)?;
        self.recv()
    }

    /// Two requests sent at once, their answers read in order: one round
    /// trip instead of two (the node answers a connection's requests in
    /// the order they came).
    pub(crate) fn call_two(&mut self, a: &Request, b: &Request) -> Result<(Response, Response)> {
        self.send(a)?;
        self.send(b)?;
        let ra = self.recv()?;
        Ok((ra, self.recv()?))
    }

    fn send(&mut self, req: &Request) -> Result<()> {
        frame::append_frame(&mut self.outbox, req, LOCAL_FRAME_MAX)?;
        Ok(())
    }

    fn recv(&mut self) -> Result<Response> {
        if !self.outbox.is_empty() {
            use std::io::Write;
            let sent = self.stream.write_all(&self.outbox);
            self.outbox.clear();
            sent.context("sending to the node")?;
        }
        if self.hello_pending {
            self.hello_pending = false;
            match frame::read_frame(&mut self.stream, LOCAL_FRAME_MAX)? {
                Response::Hello { .. } => {}
                Response::Error(e) => bail!("node refused: {e}"),
                other => bail!("unexpected answer {other:?}"),
            }
        }
        Ok(frame::read_frame(&mut self.stream, LOCAL_FRAME_MAX)?)
    }
}

/// Whether a node runs for this state dir: it holds `node.lock`
/// (`flock`, as the node takes it). The probe holds the lock shared for a
/// moment; a node starting then tries again (`daemon::lock_state`).
fn node_holds_lock(cfg: &Config) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(cfg.state.join("node.lock")) else {
        return false;
    };
    // SAFETY: flock on a descriptor this function owns; released at once.
    let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    if free {
        // SAFETY: as above.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
    }
    !free
}

/// Start `swarmcc node` detached, logging to `<state>/node.log`.
pub fn start_node(cfg: &Config) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let exe = std::env::current_exe()?;
    swarmcc_node::ownership::own_dir(&cfg.state)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(cfg.state.join("node.log"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid, close_range and fcntl are async-signal-safe. setsid
    // detaches the node from the build's terminal and process group so
    // Ctrl-C on make leaves it running. Every other descriptor the build
    // handed down (make's jobserver pipe, a CI runner's output pipe) is
    // closed at exec: a daemon holding one would keep whoever waits for its
    // end (a CI step reading the build's output) waiting for as long as the
    // node runs.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            close_inherited_at_exec();
            Ok(())
        });
    }
    cmd.spawn().context("spawning swarmcc node")?;
    Ok(())
}

/// Mark every descriptor above stderr close-on-exec (in a child before exec).
fn close_inherited_at_exec() {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain syscall on this process's descriptor table.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return;
        }
    }
    // Older kernels, other systems: one by one, as far as the limit goes.
    // SAFETY: sysconf and fcntl on descriptors that may not exist.
    unsafe {
        let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(256, 65_536) as libc::c_int;
        for fd in 3..max {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// Ask the node to stop and wait until its socket is gone.
pub fn stop_node(cfg: &Config) -> Result<bool> {
    let Ok(mut c) = NodeClient::connect(cfg) else {
        return Ok(false);
    };
    c.call(&Request::Shutdown)?;
    let sock = cfg.socket_path();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&sock).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(true)
}
