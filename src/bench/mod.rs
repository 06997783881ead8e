//! `bench`: throughput and latency of the kernel-buffer vhost path against a
//! veth pair (the baseline: same kernel, same moment), per feature set.
//!
//! The vhost path is what `run` builds: a `serve --json` child, its TAP in
//! `<prefix>h2g` (fe80::) and its virtio-net interface in `<prefix>g2h`
//! (fe80::1). The baseline is a veth pair between `<prefix>vb-a` (fe80::) and
//! `<prefix>vb-b` (fe80::1). Every figure is measured by threads of this
//! process that joined the namespaces (setns), over IPv6 link-local
//! addresses with scope ids:
//! - TCP stream, both directions: the sender writes for a fixed duration,
//!   the receiver counts bytes from its first byte to EOF;
//! - UDP request/response: 1-byte requests, one outstanding, fixed duration;
//! - ICMPv6 echo round trips of 64 and 20000 bytes (min/median/p99), built
//!   with [`crate::icmp`]'s packet helpers.
//!
//! Repetitions alternate vhost and veth, figures are medians over the
//! repetitions, and each figure gets the ratio vhost/veth.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, Shutdown, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    bind, recvfrom, sendto, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn6,
};

use crate::errno_of;
use crate::icmp::{build_echo_request, new_identifier, parse_echo, pattern, ICMP6_ECHO_REPLY};
use crate::net::Rtnl;
use crate::netns::{self, NetnsGuard};
use crate::serve::vktest_set_features;
use crate::suite::{setup_pair, skip_reason, verify_two_way, Pair, ServeChild, G2H_ADDR, H2G_ADDR};
use crate::vhost::{feature_names, virtio_negotiated_features, FeatureSet, VhostNetKernel, VHOST_NET_KERNEL_PATH};
use crate::vktest::{Vktest, VKTEST_PATH};

/// Exit status when the devices (or root) are missing.
pub const EXIT_SKIP: i32 = 4;

/// Slice of every blocking wait, so that a stop request is seen quickly.
const SLICE: Duration = Duration::from_millis(100);
/// How long one UDP request or ICMPv6 echo may stay unanswered (counted as lost).
const REPLY_WAIT: Duration = Duration::from_secs(1);
/// Names of the veth ends (inside the baseline namespaces only).
const VETH_A: &str = "vkbench0";
const VETH_B: &str = "vkbench1";

#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Measurement time of each figure in each repetition.
    pub duration: Duration,
    /// Repetitions (vhost and veth alternate).
    pub reps: u32,
    /// One feature set, or None for `rfc`, `offloads` and `offloads,ring` (if vhost offers them).
    pub features: Option<FeatureSet>,
    pub json: bool,
    /// Namespace names: <prefix>h2g, <prefix>g2h, <prefix>vb-a, <prefix>vb-b.
    pub ns_prefix: String,
    /// Limit of every wait (netlink events, serve child, stalled traffic).
    pub timeout: Duration,
    /// Path of this program (to spawn `serve`).
    pub exe: String,
    /// Harness self-test: `serve --fake-device` instead of vhost + vktest.
    pub fake_device: bool,
}

impl Default for BenchOpts {
    fn default() -> Self {
        BenchOpts {
            duration: Duration::from_secs(3),
            reps: 3,
            features: None,
            json: false,
            ns_prefix: String::new(),
            timeout: Duration::from_secs(15),
            exe: "/proc/self/exe".into(),
            fake_device: false,
        }
    }
}

impl BenchOpts {
    fn ns(&self, what: &str) -> String {
        format!("{}{what}", self.ns_prefix)
    }
}

/// Stop request seen by measurement threads: a global flag (the whole bench,
/// set when it ends or is cancelled) and a local one (one measurement).
#[derive(Debug, Clone, Default)]
pub struct Stop {
    global: Arc<AtomicBool>,
    local: Arc<AtomicBool>,
}

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }

    /// Same global flag, fresh local one.
    pub fn child(&self) -> Stop {
        Stop { global: self.global.clone(), local: Arc::default() }
    }

    pub fn set(&self) {
        self.local.store(true, Ordering::Relaxed);
    }

    pub fn set_global(&self) {
        self.global.store(true, Ordering::Relaxed);
    }

    pub fn is_set(&self) -> bool {
        self.local.load(Ordering::Relaxed) || self.global.load(Ordering::Relaxed)
    }

    /// Whether the whole bench was told to stop.
    pub fn global_set(&self) -> bool {
        self.global.load(Ordering::Relaxed)
    }

    fn check(&self) -> Result<()> {
        if self.is_set() {
            bail!("stopped");
        }
        Ok(())
    }
}

/// Sets the global stop flag when dropped (end of the bench, error, or the
/// bench future dropped on SIGINT/SIGTERM), so every thread winds down.
pub struct StopOnDrop(pub Stop);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.set_global();
    }
}

/// One end of a path: namespace, interface index inside it, address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub ns: String,
    pub ifindex: u32,
    pub addr: Ipv6Addr,
}

impl End {
    fn sock(&self, port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(self.addr, port, 0, self.ifindex)
    }
}

/// A path between two namespaces: h2g side (fe80::) and g2h side (fe80::1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub h2g: End,
    pub g2h: End,
}

impl From<&Pair> for Path {
    fn from(p: &Pair) -> Self {
        Path {
            h2g: End { ns: p.h2g_ns.clone(), ifindex: p.h2g_index, addr: H2G_ADDR },
            g2h: End { ns: p.g2h_ns.clone(), ifindex: p.g2h_index, addr: G2H_ADDR },
        }
    }
}

/// Run `f` on a new thread that has joined network namespace `ns`.
fn spawn_in<R, F>(ns: &str, name: &str, f: F) -> Result<JoinHandle<Result<R>>>
where
    R: Send + 'static,
    F: FnOnce() -> Result<R> + Send + 'static,
{
    let file = netns::open(ns)?;
    let label = ns.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into network namespace {label}"))?;
            drop(file);
            f()
        })
        .with_context(|| format!("spawn thread {name}"))
}

fn join<R>(h: JoinHandle<Result<R>>, what: &str) -> Result<R> {
    h.join().map_err(|_| anyhow!("{what} thread panicked"))?
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}

/// Bytes received and the receiver's time from its first byte to EOF.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamResult {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl StreamResult {
    pub fn mbit_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.bytes as f64 * 8.0 / s / 1e6
        } else {
            0.0
        }
    }
}

fn tcp_receiver(to: End, port_tx: mpsc::Sender<u16>, limit: Duration, stop: Stop) -> Result<StreamResult> {
    let listener = TcpListener::bind(to.sock(0)).with_context(|| format!("bind TCP listener to {}", to.sock(0)))?;
    let port = listener.local_addr().context("TCP listener address")?.port();
    listener.set_nonblocking(true).context("TCP listener O_NONBLOCK")?;
    port_tx.send(port).map_err(|_| anyhow!("TCP sender went away"))?;
    let start = Instant::now();
    let mut s = loop {
        stop.check()?;
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if timed_out(&e) => {
                if start.elapsed() > limit {
                    bail!("no TCP connection within {:.0}s", limit.as_secs_f64());
                }
                let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(SLICE.as_millis() as u16)) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e).context("poll TCP listener"),
                }
            }
            Err(e) => return Err(e).context("accept TCP connection"),
        }
    };
    s.set_nonblocking(false).context("TCP socket blocking")?;
    s.set_read_timeout(Some(SLICE)).context("SO_RCVTIMEO")?;
    let mut buf = vec![0u8; 256 << 10];
    let mut bytes = 0u64;
    let mut first = None;
    let mut progress = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let now = Instant::now();
                first.get_or_insert(now);
                progress = now;
                bytes += n as u64;
            }
            Err(e) if timed_out(&e) => {
                stop.check()?;
                if progress.elapsed() > limit {
                    bail!("TCP stream stalled: nothing received for {:.0}s after {bytes} bytes", limit.as_secs_f64());
                }
            }
            Err(e) => return Err(e).with_context(|| format!("TCP receive after {bytes} bytes")),
        }
    }
    let elapsed = first.map(|f| f.elapsed()).unwrap_or_default();
    Ok(StreamResult { bytes, elapsed })
}

fn tcp_sender(from: End, to: End, port: u16, duration: Duration, limit: Duration, stop: Stop) -> Result<u64> {
    let dst = SocketAddr::V6(SocketAddrV6::new(to.addr, port, 0, from.ifindex));
    let mut s = TcpStream::connect_timeout(&dst, limit).with_context(|| format!("TCP connect to {dst}"))?;
    s.set_write_timeout(Some(SLICE)).context("SO_SNDTIMEO")?;
    let buf = vec![0x5au8; 128 << 10];
    let start = Instant::now();
    let mut progress = start;
    let mut sent = 0u64;
    while start.elapsed() < duration {
        stop.check()?;
        match s.write(&buf) {
            Ok(n) => {
                sent += n as u64;
                progress = Instant::now();
            }
            Err(e) if timed_out(&e) => {
                if progress.elapsed() > limit {
                    bail!("TCP stream stalled: could not send for {:.0}s after {sent} bytes", limit.as_secs_f64());
                }
            }
            Err(e) => return Err(e).with_context(|| format!("TCP send to {dst} after {sent} bytes")),
        }
    }
    s.shutdown(Shutdown::Write).context("TCP shutdown")?;
    Ok(sent)
}

/// TCP stream from `from` to `to` for `duration`; bytes counted by the receiver.
pub fn tcp_stream(from: &End, to: &End, duration: Duration, limit: Duration, stop: &Stop) -> Result<StreamResult> {
    let local = stop.child();
    let (tx, rx) = mpsc::channel();
    let (to2, l2) = (to.clone(), local.clone());
    let recv = spawn_in(&to.ns, "tcp-recv", move || tcp_receiver(to2, tx, limit, l2))?;
    let (from2, to3, l3) = (from.clone(), to.clone(), local.clone());
    let send = spawn_in(&from.ns, "tcp-send", move || {
        let port = rx.recv_timeout(limit).map_err(|_| anyhow!("TCP receiver did not start listening"))?;
        tcp_sender(from2, to3, port, duration, limit, l3)
    });
    let sent = match send {
        Ok(h) => join(h, "TCP sender"),
        Err(e) => Err(e),
    };
    if sent.is_err() {
        local.set();
    }
    let got = join(recv, "TCP receiver");
    let what = || format!("TCP stream {}%{} -> {}", from.ns, from.ifindex, to.ns);
    match (sent, got) {
        (Ok(_), Ok(r)) => Ok(r),
        (Err(_), _) | (Ok(_), Err(_)) if stop.global_set() => Err(anyhow!("stopped")),
        (Err(e), _) | (Ok(_), Err(e)) => Err(e.context(what())),
    }
}

fn udp_server(at: End, port_tx: mpsc::Sender<u16>, stop: Stop) -> Result<u64> {
    let s = UdpSocket::bind(at.sock(0)).with_context(|| format!("bind UDP socket to {}", at.sock(0)))?;
    let port = s.local_addr().context("UDP socket address")?.port();
    s.set_read_timeout(Some(SLICE)).context("SO_RCVTIMEO")?;
    port_tx.send(port).map_err(|_| anyhow!("UDP client went away"))?;
    let mut buf = [0u8; 64];
    let mut answered = 0;
    while !stop.is_set() {
        match s.recv_from(&mut buf) {
            Ok((n, peer)) => {
                s.send_to(&buf[..n], peer).with_context(|| format!("UDP reply to {peer}"))?;
                answered += 1;
            }
            Err(e) if timed_out(&e) => {}
            Err(e) => return Err(e).context("UDP server receive"),
        }
    }
    Ok(answered)
}

/// Transactions per second and requests that got no reply within 1 s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RrResult {
    pub transactions: u64,
    pub lost: u64,
    pub elapsed: Duration,
}

impl RrResult {
    pub fn per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.transactions as f64 / s
        } else {
            0.0
        }
    }
}

fn udp_client(from: End, to: End, port: u16, duration: Duration, limit: Duration, stop: Stop) -> Result<RrResult> {
    let s = UdpSocket::bind(from.sock(0)).with_context(|| format!("bind UDP socket to {}", from.sock(0)))?;
    let dst = SocketAddrV6::new(to.addr, port, 0, from.ifindex);
    s.connect(dst).with_context(|| format!("UDP connect to {dst}"))?;
    s.set_read_timeout(Some(SLICE)).context("SO_RCVTIMEO")?;
    let mut r = RrResult { transactions: 0, lost: 0, elapsed: Duration::ZERO };
    let mut buf = [0u8; 64];
    let start = Instant::now();
    let mut progress = start;
    let mut seq = 0u8;
    'outer: while start.elapsed() < duration {
        stop.check()?;
        seq = seq.wrapping_add(1);
        s.send(&[seq]).with_context(|| format!("UDP send to {dst}"))?;
        let sent = Instant::now();
        loop {
            match s.recv(&mut buf) {
                Ok(1) if buf[0] == seq => {
                    r.transactions += 1;
                    progress = Instant::now();
                    continue 'outer;
                }
                Ok(_) => {} // a late reply to a request counted as lost
                Err(e) if timed_out(&e) => {
                    stop.check()?;
                    if progress.elapsed() > limit {
                        bail!("UDP request/response stalled: no reply for {:.0}s", limit.as_secs_f64());
                    }
                    if sent.elapsed() > REPLY_WAIT {
                        r.lost += 1;
                        continue 'outer;
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("UDP receive from {dst}")),
            }
        }
    }
    r.elapsed = start.elapsed();
    Ok(r)
}

/// 1-byte UDP requests from `from` answered by a server thread in `to`.
pub fn udp_rr(from: &End, to: &End, duration: Duration, limit: Duration, stop: &Stop) -> Result<RrResult> {
    let local = stop.child();
    let (tx, rx) = mpsc::channel();
    let (to2, l2) = (to.clone(), local.clone());
    let server = spawn_in(&to.ns, "udp-server", move || udp_server(to2, tx, l2))?;
    let (from2, to3, l3) = (from.clone(), to.clone(), local.clone());
    let client = spawn_in(&from.ns, "udp-client", move || {
        let port = rx.recv_timeout(limit).map_err(|_| anyhow!("UDP server did not start"))?;
        udp_client(from2, to3, port, duration, limit, l3)
    });
    let res = match client {
        Ok(h) => join(h, "UDP client"),
        Err(e) => Err(e),
    };
    local.set();
    let served = join(server, "UDP server");
    let what = || format!("UDP request/response {} -> {}", from.ns, to.ns);
    match (res, served) {
        (Ok(r), Ok(_)) => Ok(r),
        (Err(_), _) | (Ok(_), Err(_)) if stop.global_set() => Err(anyhow!("stopped")),
        (Err(e), _) | (Ok(_), Err(e)) => Err(e.context(what())),
    }
}

/// Round-trip times in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct RttStats {
    pub samples: usize,
    pub lost: u64,
    pub min_us: f64,
    pub median_us: f64,
    /// Mean of the samples: unbiased even with a coarse clock (see [`clock_granularity`]).
    pub mean_us: f64,
    pub p99_us: f64,
}

impl RttStats {
    pub fn from_samples(mut rtts: Vec<Duration>, lost: u64) -> Option<Self> {
        if rtts.is_empty() {
            return None;
        }
        rtts.sort();
        let us: Vec<f64> = rtts.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        Some(RttStats {
            samples: us.len(),
            lost,
            min_us: us[0],
            median_us: median(&us).unwrap_or(us[0]),
            mean_us: us.iter().sum::<f64>() / us.len() as f64,
            p99_us: percentile_sorted(&us, 99.0),
        })
    }
}

/// Nearest-rank percentile of sorted, non-empty data.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median (mean of the middle two for an even count); None for no data.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn icmp_socket(from: &End) -> Result<OwnedFd> {
    let fd = socket(AddressFamily::Inet6, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::IcmpV6)
        .context("socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6)")?;
    let a = SockaddrIn6::from(from.sock(0));
    bind(fd.as_raw_fd(), &a).with_context(|| format!("bind raw ICMPv6 socket to {}%{}", from.addr, from.ifindex))?;
    Ok(fd)
}

/// Adaptive echoes (one outstanding) of `size` data bytes from `from` to `to`
/// for `duration`; replies are checked byte for byte.
fn icmp_pinger(from: End, to: End, size: usize, duration: Duration, limit: Duration, stop: Stop) -> Result<RttStats> {
    let fd = icmp_socket(&from)?;
    let dst = SockaddrIn6::from(SocketAddrV6::new(to.addr, 0, 0, from.ifindex));
    let id = new_identifier();
    let payload = pattern(0, size);
    let mut pkt = build_echo_request(id, 0, &payload);
    let mut buf = vec![0u8; 65536];
    let mut rtts = Vec::new();
    let mut lost = 0u64;
    let start = Instant::now();
    let mut progress = start;
    let mut seq = 0u16;
    'outer: while start.elapsed() < duration {
        stop.check()?;
        seq = seq.wrapping_add(1);
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        let sent = Instant::now();
        sendto(fd.as_raw_fd(), &pkt, &dst, MsgFlags::empty()).with_context(|| format!("sendto {}", to.addr))?;
        loop {
            let waited = sent.elapsed();
            if waited > REPLY_WAIT {
                lost += 1;
                if progress.elapsed() > limit {
                    bail!("ICMPv6 echo stalled: no reply for {:.0}s", limit.as_secs_f64());
                }
                continue 'outer;
            }
            let left = (REPLY_WAIT - waited).min(SLICE);
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(left.as_millis().max(1) as u16)) {
                Ok(0) | Err(Errno::EINTR) => {
                    stop.check()?;
                    continue;
                }
                Ok(_) => {}
                Err(e) => return Err(e).context("poll raw ICMPv6 socket"),
            }
            let (n, peer) = match recvfrom::<SockaddrIn6>(fd.as_raw_fd(), &mut buf) {
                Ok(r) => r,
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).context("recvfrom raw ICMPv6 socket"),
            };
            let now = Instant::now();
            if peer.map(|a| a.ip()) != Some(to.addr) {
                continue;
            }
            match parse_echo(&buf[..n]) {
                Some(e) if e.kind == ICMP6_ECHO_REPLY && e.id == id && e.seq == seq => {
                    if e.payload != payload.as_slice() {
                        bail!("ICMPv6 echo reply {seq} carries corrupted data ({} bytes)", e.payload.len());
                    }
                    rtts.push(now - sent);
                    progress = now;
                    continue 'outer;
                }
                _ => {}
            }
        }
    }
    RttStats::from_samples(rtts, lost).ok_or_else(|| anyhow!("no ICMPv6 echo reply at all ({lost} lost)"))
}

/// ICMPv6 echo round trips of `size` bytes from a thread in `from`'s namespace.
pub fn icmp_rtt(
    from: &End,
    to: &End,
    size: usize,
    duration: Duration,
    limit: Duration,
    stop: &Stop,
) -> Result<RttStats> {
    let (f, t, s) = (from.clone(), to.clone(), stop.child());
    let h = spawn_in(&from.ns, "icmp-echo", move || icmp_pinger(f, t, size, duration, limit, s))?;
    join(h, "ICMPv6 echo").with_context(|| format!("ICMPv6 echo {size} bytes {} -> {}", from.ns, to.ns))
}

/// What one figure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figure {
    /// JSON key.
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
}

const fn fig(key: &'static str, label: &'static str, unit: &'static str) -> Figure {
    Figure { key, label, unit }
}

/// Every figure, in table order.
pub const FIGURES: &[Figure] = &[
    fig("tcp_h2g_to_g2h", "TCP stream h2g->g2h", "Mbit/s"),
    fig("tcp_g2h_to_h2g", "TCP stream g2h->h2g", "Mbit/s"),
    fig("udp_rr", "UDP 1-byte req/resp", "trans/s"),
    fig("icmp64_min", "ICMPv6 64 B rtt min", "us"),
    fig("icmp64_median", "ICMPv6 64 B rtt median", "us"),
    fig("icmp64_mean", "ICMPv6 64 B rtt mean", "us"),
    fig("icmp64_p99", "ICMPv6 64 B rtt p99", "us"),
    fig("icmp20000_min", "ICMPv6 20000 B rtt min", "us"),
    fig("icmp20000_median", "ICMPv6 20000 B rtt median", "us"),
    fig("icmp20000_mean", "ICMPv6 20000 B rtt mean", "us"),
    fig("icmp20000_p99", "ICMPv6 20000 B rtt p99", "us"),
];

/// One repetition over one path: a value per figure (None: failed) and the errors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathRun {
    pub values: Vec<Option<f64>>,
    pub errors: Vec<String>,
}

/// Measure every figure once over `path` (blocking).
pub fn measure_path(path: &Path, duration: Duration, limit: Duration, stop: &Stop) -> PathRun {
    let mut run = PathRun { values: vec![None; FIGURES.len()], errors: Vec::new() };
    let keep = |r: Result<Vec<f64>>, at: usize, run: &mut PathRun| match r {
        Ok(v) => v.into_iter().enumerate().for_each(|(i, x)| run.values[at + i] = Some(x)),
        Err(e) => run.errors.push(format!("{e:#}")),
    };
    let (a, b) = (&path.h2g, &path.g2h);
    keep(tcp_stream(a, b, duration, limit, stop).map(|r| vec![r.mbit_per_s()]), 0, &mut run);
    keep(tcp_stream(b, a, duration, limit, stop).map(|r| vec![r.mbit_per_s()]), 1, &mut run);
    keep(udp_rr(a, b, duration, limit, stop).map(|r| vec![r.per_s()]), 2, &mut run);
    for (size, at) in [(64, 3), (20000, 7)] {
        let r = icmp_rtt(a, b, size, duration, limit, stop);
        keep(r.map(|s| vec![s.min_us, s.median_us, s.mean_us, s.p99_us]), at, &mut run);
    }
    run
}

/// Everything measured (or not) for one feature set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetReport {
    pub set: FeatureSet,
    /// TUNSETOFFLOAD flags of the TAP (derived from the guest features).
    pub tap_offloads: u32,
    /// The g2h virtio device and what its driver negotiated (sysfs).
    pub device: String,
    pub negotiated: Option<u64>,
    /// Why the set was not measured.
    pub skipped: Option<String>,
    pub notes: Vec<String>,
    pub errors: Vec<String>,
    pub vhost: Vec<PathRun>,
    pub veth: Vec<PathRun>,
}

impl SetReport {
    /// Requested features the driver did not negotiate.
    pub fn not_negotiated(&self) -> Option<u64> {
        self.negotiated.map(|n| self.set.bits & !n)
    }

    /// (vhost median, veth median, ratio) of figure `i` over the repetitions.
    pub fn figure(&self, i: usize) -> (Option<f64>, Option<f64>, Option<f64>) {
        let med = |runs: &[PathRun]| {
            median(&runs.iter().filter_map(|r| r.values.get(i).copied().flatten()).collect::<Vec<_>>())
        };
        let (v, b) = (med(&self.vhost), med(&self.veth));
        let ratio = match (v, b) {
            (Some(v), Some(b)) if b != 0.0 => Some(v / b),
            _ => None,
        };
        (v, b, ratio)
    }

    fn failed(&self) -> bool {
        !self.errors.is_empty() || self.vhost.iter().chain(&self.veth).any(|r| !r.errors.is_empty())
    }
}

/// The whole result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub duration: Duration,
    pub reps: u32,
    pub fake_device: bool,
    /// Smallest step of the monotonic clock seen here ([`clock_granularity`]).
    pub clock_granularity: Duration,
    pub sets: Vec<SetReport>,
}

/// Granularity above which single round-trip times are not meaningful.
pub const COARSE_CLOCK: Duration = Duration::from_micros(100);

/// The smallest step of the monotonic clock (`Instant`), measured: a guest
/// whose clocksource is jiffies (no usable TSC/HPET under TCG) ticks in 4 ms
/// steps, which makes single round-trip times meaningless.
pub fn clock_granularity() -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        loop {
            let d = Instant::now() - t0;
            if !d.is_zero() {
                best = best.min(d);
                break;
            }
        }
    }
    best
}

impl Report {
    /// 0 if every set that was tried measured every figure, else 1.
    pub fn exit_code(&self, explicit_set: bool) -> i32 {
        let measured = self.sets.iter().filter(|s| s.skipped.is_none()).count();
        if measured == 0
            || self.sets.iter().any(|s| s.failed())
            || (explicit_set && self.sets.iter().any(|s| s.skipped.is_some()))
        {
            1
        } else {
            0
        }
    }

    pub fn text(&self) -> String {
        let mut o = String::new();
        let vhost = if self.fake_device {
            "fake device (TAPs bridged in user space)"
        } else {
            "TAP <-> vhost-net-kernel <-> vktest <-> virtio-net"
        };
        o += &format!(
            "bench: vhost = {vhost}; veth = veth pair (baseline)\nbench: {} repetition(s) x {} s per figure; medians over repetitions\n",
            self.reps,
            fmt_secs(self.duration)
        );
        o += &format!("bench: clock granularity {:.3} us\n", self.clock_granularity.as_secs_f64() * 1e6);
        if self.clock_granularity > COARSE_CLOCK {
            o += "bench: WARNING: coarse clock (jiffies clocksource?): rtt min/median/p99 are quantized, only the means \
                  are meaningful (in a TCG guest, boot with tsc_early_khz=<host TSC kHz> tsc=reliable)\n";
        }
        for s in &self.sets {
            o += &format!(
                "\nfeature set {} ({}), tap offloads {}\n",
                s.set.name,
                feature_names(s.set.bits).join(","),
                tun_offload_names(s.tap_offloads)
            );
            o += &format!(
                "  VHOST_SET_FEATURES {}; vktest offers {}\n",
                feature_names(s.set.vhost_bits()).join(","),
                feature_names(s.set.bits).join(",")
            );
            if let Some(n) = s.negotiated {
                o += &format!("  negotiated by virtio-net on {}: {}\n", s.device, feature_names(n).join(","));
                let missing = s.not_negotiated().unwrap_or(0);
                if missing != 0 {
                    o += &format!(
                        "  NOT negotiated (asked, but the kernel did not agree): {}\n",
                        feature_names(missing).join(",")
                    );
                }
            }
            for n in &s.notes {
                o += &format!("  note: {n}\n");
            }
            if let Some(why) = &s.skipped {
                o += &format!("  skipped: {why}\n");
                continue;
            }
            o += &format!("  {:<32} {:>12} {:>12} {:>11}\n", "figure", "vhost", "veth", "vhost/veth");
            for (i, f) in FIGURES.iter().enumerate() {
                let (v, b, r) = s.figure(i);
                let label = format!("{} [{}]", f.label, f.unit);
                o += &format!("  {label:<32} {:>12} {:>12} {:>11}\n", fmt_val(v), fmt_val(b), fmt_ratio(r));
            }
            for e in &s.errors {
                o += &format!("  error: {e}\n");
            }
            for (what, runs) in [("vhost", &s.vhost), ("veth", &s.veth)] {
                for (i, r) in runs.iter().enumerate() {
                    for e in &r.errors {
                        o += &format!("  error ({what}, repetition {}): {e}\n", i + 1);
                    }
                }
            }
        }
        o
    }

    pub fn json(&self) -> String {
        let sets: Vec<String> = self.sets.iter().map(set_json).collect();
        format!(
            "{{\"duration_s\":{},\"reps\":{},\"fake_device\":{},\"clock_granularity_us\":{},\"sets\":[{}]}}",
            fmt_secs(self.duration),
            self.reps,
            self.fake_device,
            json_num(Some(self.clock_granularity.as_secs_f64() * 1e6)),
            sets.join(",")
        )
    }
}

fn set_json(s: &SetReport) -> String {
    let strs = |v: &[String]| format!("[{}]", v.iter().map(|x| json_str(x)).collect::<Vec<_>>().join(","));
    let opt_hex = |v: Option<u64>| v.map(|n| format!("\"{n:#x}\"")).unwrap_or_else(|| "null".into());
    let figures: Vec<String> = FIGURES
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (v, b, r) = s.figure(i);
            let reps = |runs: &[PathRun]| {
                format!("[{}]", runs.iter().map(|x| json_num(x.values.get(i).copied().flatten())).collect::<Vec<_>>().join(","))
            };
            format!(
                "{{\"key\":{},\"label\":{},\"unit\":{},\"vhost\":{},\"veth\":{},\"ratio\":{},\"vhost_reps\":{},\"veth_reps\":{}}}",
                json_str(f.key),
                json_str(f.label),
                json_str(f.unit),
                json_num(v),
                json_num(b),
                json_num(r),
                reps(&s.vhost),
                reps(&s.veth)
            )
        })
        .collect();
    let mut errors = s.errors.clone();
    for (what, runs) in [("vhost", &s.vhost), ("veth", &s.veth)] {
        for (i, r) in runs.iter().enumerate() {
            errors.extend(r.errors.iter().map(|e| format!("{what} repetition {}: {e}", i + 1)));
        }
    }
    format!(
        "{{\"name\":{},\"features\":\"{:#x}\",\"feature_names\":{},\"tap_offloads\":\"{:#x}\",\"device\":{},\"negotiated\":{},\"negotiated_names\":{},\"not_negotiated\":{},\"skipped\":{},\"notes\":{},\"errors\":{},\"figures\":[{}]}}",
        json_str(&s.set.name),
        s.set.bits,
        strs(&feature_names(s.set.bits)),
        s.tap_offloads,
        json_str(&s.device),
        opt_hex(s.negotiated),
        s.negotiated.map(|n| strs(&feature_names(n))).unwrap_or_else(|| "null".into()),
        s.not_negotiated().map(|n| strs(&feature_names(n))).unwrap_or_else(|| "null".into()),
        s.skipped.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
        strs(&s.notes),
        strs(&errors),
        figures.join(",")
    )
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

fn fmt_val(v: Option<f64>) -> String {
    match v {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    }
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into())
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.3}"),
        _ => "null".into(),
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// `csum,tso4,tso6` or `none`.
pub fn tun_offload_names(flags: u32) -> String {
    use crate::ioctl::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN};
    let names: Vec<&str> =
        [(TUN_F_CSUM, "csum"), (TUN_F_TSO4, "tso4"), (TUN_F_TSO6, "tso6"), (TUN_F_TSO_ECN, "tso_ecn")]
            .iter()
            .filter(|(f, _)| flags & f != 0)
            .map(|(_, n)| *n)
            .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// Create the baseline: a veth pair between `a_ns` (fe80::) and `b_ns` (fe80::1).
pub async fn setup_veth(a_ns: &str, b_ns: &str, limit: Duration) -> Result<Path> {
    // Created inside a_ns, so nothing ever appears in the caller's namespace.
    let rtnl = Rtnl::new(Some(a_ns))?;
    rtnl.create_veth(VETH_A, VETH_B).await?;
    let ia = rtnl.link_by_name(VETH_A).await?.index;
    let ib = rtnl.link_by_name(VETH_B).await?.index;
    let pair = setup_pair(&rtnl, (ia, VETH_A), (ib, VETH_B), a_ns, b_ns, limit).await?;
    Ok(Path::from(&pair))
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R> {
    tokio::task::spawn_blocking(f).await.map_err(|e| anyhow!("measurement task failed: {e}"))
}

fn progress(opts: &BenchOpts, msg: &str) {
    if !opts.json {
        eprintln!("bench: {msg}");
    }
}

/// Repetitions over the vhost pair and the veth baseline, alternating.
async fn measure_reps(
    opts: &BenchOpts,
    set: &str,
    vhost: &Path,
    veth: &Path,
    stop: &Stop,
    r: &mut SetReport,
) -> Result<()> {
    for rep in 1..=opts.reps {
        for (what, path) in [("vhost", vhost), ("veth", veth)] {
            progress(opts, &format!("set {set}: repetition {rep}/{}: {what}", opts.reps));
            let (p, s, d, t) = (path.clone(), stop.clone(), opts.duration, opts.timeout);
            let run = blocking(move || measure_path(&p, d, t, &s)).await?;
            stop.check()?;
            if what == "vhost" { &mut r.vhost } else { &mut r.veth }.push(run);
        }
    }
    Ok(())
}

/// One feature set: serve child, pair placed, sanity check, repetitions.
async fn bench_set(opts: &BenchOpts, set: &FeatureSet, veth: &Path, stop: &Stop) -> SetReport {
    let mut r =
        SetReport { set: set.clone(), tap_offloads: crate::tap::derived_offloads(set.bits), ..Default::default() };
    if let Err(e) = bench_set_inner(opts, set, veth, stop, &mut r).await {
        r.errors.push(format!("{e:#}"));
    }
    r
}

async fn bench_set_inner(
    opts: &BenchOpts,
    set: &FeatureSet,
    veth: &Path,
    stop: &Stop,
    r: &mut SetReport,
) -> Result<()> {
    let t = opts.timeout;
    let (h2g_ns, g2h_ns) = (opts.ns("h2g"), opts.ns("g2h"));
    let mut nsg = NetnsGuard::new();
    nsg.create(&h2g_ns)?;
    nsg.create(&g2h_ns)?;
    let mut extra: Vec<String> = ["--features", &set.name, "--tap-offloads", "derived"].map(String::from).to_vec();
    if opts.fake_device {
        extra.push("--fake-device".into());
    }
    progress(opts, &format!("set {}: starting serve", set.name));
    let mut child = ServeChild::spawn_with(&opts.exe, &extra, t).await?;
    let ifs = child.ifs.clone();
    r.device = ifs.g2h_device.clone();
    let res: Result<()> = async {
        if !ifs.g2h_device.is_empty() {
            match virtio_negotiated_features(&ifs.g2h_device) {
                Ok(n) => r.negotiated = Some(n),
                Err(e) => r.notes.push(format!("negotiated features unknown: {e:#}")),
            }
        }
        let root = Rtnl::new(None)?;
        let pair =
            setup_pair(&root, (ifs.h2g_ifindex, &ifs.h2g), (ifs.g2h_ifindex, &ifs.g2h), &h2g_ns, &g2h_ns, t).await?;
        verify_two_way(&pair, 2, 20000, t).await.context("sanity check of the vhost pair before measuring")?;
        measure_reps(opts, &set.name, &Path::from(&pair), veth, stop, r).await
    }
    .await;
    if res.is_err() {
        child.kill_and_wait(t).await;
        let said = child.stderr_lines(t).await;
        r.notes.extend(said.into_iter().map(|l| format!("serve: {l}")));
        return res;
    }
    child.terminate(t).await?;
    nsg.delete_all()
}

/// Why `set` cannot run on this kernel, if it cannot: /dev/vhost-net-kernel
/// must offer its vhost-net part (VHOST_GET_FEATURES), and a fresh /dev/vktest
/// must accept the whole set (VKTEST_SET_FEATURES; the device is closed again
/// without attaching). A probe that cannot be made is not a reason: serve
/// will report the real error.
pub fn probe_set(set: &FeatureSet) -> Option<String> {
    match VhostNetKernel::open().and_then(|v| v.get_features()) {
        Ok(offered) if set.vhost_bits() & !offered != 0 => {
            return Some(format!(
                "{VHOST_NET_KERNEL_PATH} does not offer {} (VHOST_GET_FEATURES {offered:#x})",
                feature_names(set.vhost_bits() & !offered).join(",")
            ))
        }
        _ => {}
    }
    if set.is_rfc() {
        return None;
    }
    let vk = Vktest::open().ok()?;
    match vktest_set_features(&vk, set.bits) {
        Ok(()) => None,
        Err(e) => match errno_of(&e) {
            Some(Errno::ENOTTY) => {
                Some(format!("{VKTEST_PATH} has no VKTEST_SET_FEATURES (a kernel with the RFC's interface)"))
            }
            Some(Errno::EINVAL) => Some(format!("{VKTEST_PATH} does not offer feature set {} ({e:#})", set.name)),
            _ => None,
        },
    }
}

/// Run the benchmark; returns the report (errors of single figures are in it).
pub async fn run_bench(opts: &BenchOpts) -> Result<Report> {
    anyhow::ensure!(opts.reps >= 1, "--reps must be at least 1");
    anyhow::ensure!(!opts.duration.is_zero(), "--duration must be positive");
    let stop = Stop::new();
    let _stop_guard = StopOnDrop(stop.clone());
    let names = ["h2g", "g2h", "vb-a", "vb-b"].map(|n| opts.ns(n));
    for ns in &names {
        if netns::exists(ns) {
            netns::delete(ns).with_context(|| format!("remove stale namespace {ns}"))?;
            progress(opts, &format!("removed stale namespace {ns}"));
        }
    }
    let mut base = NetnsGuard::new();
    base.create(&names[2])?;
    base.create(&names[3])?;
    let veth = setup_veth(&names[2], &names[3], opts.timeout).await.context("veth baseline")?;

    let sets = match &opts.features {
        Some(s) => vec![s.clone()],
        None => vec![FeatureSet::rfc(), FeatureSet::offloads(), FeatureSet::offloads_and_ring()],
    };
    let mut report = Report {
        duration: opts.duration,
        reps: opts.reps,
        fake_device: opts.fake_device,
        clock_granularity: clock_granularity(),
        sets: Vec::new(),
    };
    for set in &sets {
        let why_not = if opts.fake_device { None } else { probe_set(set) };
        if let Some(why) = why_not {
            progress(opts, &format!("set {}: skipped: {why}", set.name));
            report.sets.push(SetReport {
                set: set.clone(),
                tap_offloads: crate::tap::derived_offloads(set.bits),
                skipped: Some(why),
                ..Default::default()
            });
            continue;
        }
        report.sets.push(bench_set(opts, set, &veth, &stop).await);
        stop.check()?;
    }
    base.delete_all()?;
    Ok(report)
}

/// `bench`: print the table (or JSON); exit 0 success, 1 failure, 4 skipped.
pub async fn bench(opts: &BenchOpts) -> i32 {
    let skip = if opts.fake_device {
        (!nix::unistd::geteuid().is_root()).then(|| "not root (CAP_NET_ADMIN and CAP_SYS_ADMIN needed)".to_string())
    } else {
        skip_reason()
    };
    if let Some(why) = skip {
        if opts.json {
            println!("{{\"skipped\":{}}}", json_str(&why));
        } else {
            println!("bench: skipped: {why}");
        }
        return EXIT_SKIP;
    }
    match run_bench(opts).await {
        Ok(report) => {
            if opts.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            report.exit_code(opts.features.is_some())
        }
        Err(e) => {
            if opts.json {
                println!("{{\"error\":{}}}", json_str(&format!("{e:#}")));
            }
            eprintln!("vhost-kernel-test bench: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile_sorted(&v, 99.0), 198.0);
        assert_eq!(percentile_sorted(&v, 50.0), 100.0);
        assert_eq!(percentile_sorted(&[7.0], 99.0), 7.0);
        let s = RttStats::from_samples((1..=100).rev().map(Duration::from_micros).collect(), 2).unwrap();
        assert_eq!((s.samples, s.lost, s.min_us, s.median_us, s.p99_us), (100, 2, 1.0, 50.5, 99.0));
        assert!(RttStats::from_samples(Vec::new(), 1).is_none());
    }

    fn run(vals: &[f64]) -> PathRun {
        PathRun { values: vals.iter().map(|v| Some(*v)).collect(), errors: Vec::new() }
    }

    fn report() -> Report {
        let n = FIGURES.len();
        let mut failed = run(&vec![1.0; n]);
        failed.values[0] = None;
        failed.errors.push("TCP stream stalled".into());
        Report {
            duration: Duration::from_secs(3),
            reps: 3,
            fake_device: false,
            clock_granularity: Duration::from_nanos(50),
            sets: vec![
                SetReport {
                    set: FeatureSet::rfc(),
                    device: "virtio0".into(),
                    negotiated: Some(crate::vhost::RFC_FEATURES),
                    vhost: vec![run(&vec![10.0; n]), run(&vec![30.0; n]), failed],
                    veth: vec![run(&vec![100.0; n]), run(&vec![100.0; n]), run(&vec![40.0; n])],
                    ..Default::default()
                },
                SetReport {
                    set: FeatureSet::offloads(),
                    skipped: Some("not offered".into()),
                    tap_offloads: 7,
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn figures_are_medians_with_ratios() {
        let r = report();
        // vhost: 10, 30 (third failed) -> 20; veth: 100, 100, 40 -> 100.
        assert_eq!(r.sets[0].figure(0), (Some(20.0), Some(100.0), Some(0.2)));
        assert_eq!(r.sets[0].figure(1), (Some(10.0), Some(100.0), Some(0.1)));
        assert_eq!(r.sets[1].figure(0), (None, None, None));
        assert_eq!(r.exit_code(false), 1, "a failed figure fails the bench");
        let mut ok = r.clone();
        ok.sets[0].vhost[2] = run(&vec![20.0; FIGURES.len()]);
        assert_eq!(ok.exit_code(false), 0, "a default set the kernel lacks is only a note");
        assert_eq!(ok.exit_code(true), 1, "an explicit set that was skipped fails");
        ok.sets.remove(0);
        assert_eq!(ok.exit_code(false), 1, "nothing measured");
    }

    #[test]
    fn text_table() {
        let t = report().text();
        assert!(t.contains("feature set rfc (version_1,access_platform), tap offloads none"), "{t}");
        assert!(t.contains("negotiated by virtio-net on virtio0: version_1,access_platform"), "{t}");
        assert!(
            t.lines().any(
                |l| l.starts_with("  TCP stream h2g->g2h [Mbit/s]") && l.ends_with("20.0          100       0.200")
            ),
            "{t}"
        );
        assert!(t.contains("error (vhost, repetition 3): TCP stream stalled"), "{t}");
        assert!(t.contains("feature set offloads (csum,guest_csum,guest_tso4,guest_tso6,host_tso4,host_tso6,mrg_rxbuf,version_1,access_platform), tap offloads csum,tso4,tso6\n  VHOST_SET_FEATURES mrg_rxbuf,version_1,access_platform; vktest offers csum,guest_csum,guest_tso4,guest_tso6,host_tso4,host_tso6,mrg_rxbuf,version_1,access_platform\n  skipped: not offered"), "{t}");
        let mut r = report();
        r.sets[0].negotiated = Some(crate::vhost::RFC_FEATURES & !crate::ioctl::VIRTIO_F_ACCESS_PLATFORM);
        assert!(r.text().contains("NOT negotiated (asked, but the kernel did not agree): access_platform"));
    }

    #[test]
    fn json_shape() {
        let j = report().json();
        assert!(j.starts_with("{\"duration_s\":3,\"reps\":3,\"fake_device\":false,\"clock_granularity_us\":0.050,\"sets\":[{\"name\":\"rfc\",\"features\":\"0x300000000\""), "{j}");
        assert!(j.contains("\"key\":\"tcp_h2g_to_g2h\",\"label\":\"TCP stream h2g->g2h\",\"unit\":\"Mbit/s\",\"vhost\":20.000,\"veth\":100.000,\"ratio\":0.200,\"vhost_reps\":[10.000,30.000,null],\"veth_reps\":[100.000,100.000,40.000]"), "{j}");
        assert!(j.contains("\"errors\":[\"vhost repetition 3: TCP stream stalled\"]"), "{j}");
        assert!(j.contains("\"skipped\":\"not offered\""), "{j}");
        assert!(j.contains("\"not_negotiated\":[]"), "{j}");
        // Balanced braces and brackets (no string here contains any).
        assert_eq!(j.matches('{').count(), j.matches('}').count());
        assert_eq!(j.matches('[').count(), j.matches(']').count());
        assert_eq!(json_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn stop_flags() {
        let s = Stop::new();
        let c = s.child();
        c.set();
        assert!(c.is_set() && !s.is_set());
        let c2 = s.child();
        drop(StopOnDrop(s.clone()));
        assert!(s.is_set() && c2.is_set());
        assert!(s.check().is_err());
    }

    #[test]
    fn offload_names() {
        assert_eq!(tun_offload_names(0), "none");
        assert_eq!(tun_offload_names(crate::tap::TAP_OFFLOADS), "csum,tso4,tso6,tso_ecn");
    }
}
