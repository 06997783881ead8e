//! The figures of `bench` and how each is measured, by threads of this
//! process that joined the namespaces of a [`Path`] ([`netns::spawn_in`]),
//! over IPv6 link-local addresses with scope ids:
//! - TCP stream, both directions: the sender writes for a fixed duration,
//!   the receiver counts bytes from its first byte to EOF;
//! - UDP request/response: 1-byte requests, one outstanding, fixed duration;
//! - ICMPv6 echo round trips of 64 and 20000 bytes (min/median/mean/p99),
//!   by [`Pinger::timed`] (a corrupted reply fails the figure).
//!
//! Every wait is sliced so that a [`Stop`] request ends a measurement quickly.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, Shutdown, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::profile::{self, Window, MEASUREMENTS};
use super::report::{median, percentile_sorted};
use crate::net::icmp::{Pinger, TimedOpts};
use crate::suite::{Pair, G2H_ADDR, H2G_ADDR};
use crate::sys::netns;

/// Slice of every blocking wait, so that a stop request is seen quickly.
const SLICE: Duration = Duration::from_millis(100);
/// How long one UDP request or ICMPv6 echo may stay unanswered (counted as lost).
const REPLY_WAIT: Duration = Duration::from_secs(1);

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

    pub(super) fn check(&self) -> Result<()> {
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

fn join<R>(h: ScopedJoinHandle<'_, Result<R>>, what: &str) -> Result<R> {
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

fn tcp_receiver(to: &End, port_tx: mpsc::Sender<u16>, limit: Duration, stop: &Stop) -> Result<StreamResult> {
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

fn tcp_sender(from: &End, to: &End, port: u16, duration: Duration, limit: Duration, stop: &Stop) -> Result<u64> {
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
    let local = &stop.child();
    let (tx, rx) = mpsc::channel();
    let (sent, got) = std::thread::scope(|s| -> Result<_> {
        let recv = netns::spawn_in(s, &to.ns, "tcp-recv", move || tcp_receiver(to, tx, limit, local))?;
        let sent = netns::spawn_in(s, &from.ns, "tcp-send", move || {
            let port = rx.recv_timeout(limit).map_err(|_| anyhow!("TCP receiver did not start listening"))?;
            tcp_sender(from, to, port, duration, limit, local)
        })
        .and_then(|h| join(h, "TCP sender"));
        if sent.is_err() {
            local.set();
        }
        Ok((sent, join(recv, "TCP receiver")))
    })?;
    let what = || format!("TCP stream {}%{} -> {}", from.ns, from.ifindex, to.ns);
    match (sent, got) {
        (Ok(_), Ok(r)) => Ok(r),
        (Err(_), _) | (Ok(_), Err(_)) if stop.global_set() => Err(anyhow!("stopped")),
        (Err(e), _) | (Ok(_), Err(e)) => Err(e.context(what())),
    }
}

fn udp_server(at: &End, port_tx: mpsc::Sender<u16>, stop: &Stop) -> Result<u64> {
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

fn udp_client(from: &End, to: &End, port: u16, duration: Duration, limit: Duration, stop: &Stop) -> Result<RrResult> {
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
    let local = &stop.child();
    let (tx, rx) = mpsc::channel();
    let (res, served) = std::thread::scope(|s| -> Result<_> {
        let server = netns::spawn_in(s, &to.ns, "udp-server", move || udp_server(to, tx, local))?;
        let res = netns::spawn_in(s, &from.ns, "udp-client", move || {
            let port = rx.recv_timeout(limit).map_err(|_| anyhow!("UDP server did not start"))?;
            udp_client(from, to, port, duration, limit, local)
        })
        .and_then(|h| join(h, "UDP client"));
        local.set();
        Ok((res, join(server, "UDP server")))
    })?;
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
    /// Mean of the samples: unbiased even with a coarse clock (see [`super::report::clock_granularity`]).
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

/// ICMPv6 echo round trips of `size` bytes from a thread in `from`'s namespace.
pub fn icmp_rtt(
    from: &End,
    to: &End,
    size: usize,
    duration: Duration,
    limit: Duration,
    stop: &Stop,
) -> Result<RttStats> {
    let local = stop.child();
    let opts = TimedOpts { size, duration, reply_wait: REPLY_WAIT, stall: limit };
    std::thread::scope(|s| {
        let h = netns::spawn_in(s, &from.ns, "icmp-echo", || {
            let echoes = Pinger::new(to.addr, from.ifindex, Some(from.addr))?.timed(&opts, &|| local.is_set())?;
            RttStats::from_samples(echoes.rtts, echoes.lost)
                .ok_or_else(|| anyhow!("no ICMPv6 echo reply at all ({} lost)", echoes.lost))
        })?;
        join(h, "ICMPv6 echo")
    })
    .with_context(|| format!("ICMPv6 echo {size} bytes {} -> {}", from.ns, to.ns))
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
    // Guest CPU time (/proc/stat, not idle) per unit of work: less disturbed
    // by the host's noise than the rates, since a descheduled vCPU's time
    // is not the guest's.
    fig("cpu_tcp_h2g_to_g2h", "TCP h2g->g2h guest CPU", "ms/MB"),
    fig("cpu_tcp_g2h_to_h2g", "TCP g2h->h2g guest CPU", "ms/MB"),
    fig("cpu_udp_rr", "UDP req/resp guest CPU", "us/trans"),
    fig("cpu_icmp64", "ICMPv6 64 B guest CPU", "us/echo"),
    fig("cpu_icmp20000", "ICMPv6 20000 B guest CPU", "us/echo"),
];

/// Where the CPU figures start in [`FIGURES`] (one per [`MEASUREMENTS`] entry).
const FIRST_CPU_FIGURE: usize = 11;

/// One repetition over one path: a value per figure (None: failed), the
/// counter window of each measurement ([`MEASUREMENTS`] order) and the errors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathRun {
    pub values: Vec<Option<f64>>,
    pub windows: Vec<Option<Window>>,
    pub errors: Vec<String>,
}

/// Index in [`FIGURES`] of the CPU figure of measurement `k`.
const fn cpu_figure(k: usize) -> usize {
    FIRST_CPU_FIGURE + k
}

/// Run measurement `k` with a counter window around it (on the g2h end,
/// whose interface counts the packets); `units` says how much work a
/// result stands for. A window that cannot be read fails the repetition.
fn windowed<T>(
    run: &mut PathRun,
    k: usize,
    g2h: &End,
    profile: bool,
    measure: impl FnOnce() -> Result<T>,
    units: impl Fn(&T) -> f64,
) -> Result<T> {
    let mark = profile::begin(g2h, profile).context("counters before the measurement");
    let r = measure();
    match (mark, &r) {
        (Ok(mark), Ok(v)) => match profile::finish(mark, g2h, units(v)) {
            Ok(w) => {
                run.values[cpu_figure(k)] = w.cpu_per_unit(&MEASUREMENTS[k]);
                run.windows[k] = Some(w);
            }
            Err(e) => run.errors.push(format!("{}: counters after the measurement: {e:#}", MEASUREMENTS[k].label)),
        },
        (Err(e), _) => run.errors.push(format!("{}: {e:#}", MEASUREMENTS[k].label)),
        (Ok(_), Err(_)) => {}
    }
    r
}

/// Measure every figure once over `path` (blocking); with `profile`, each
/// measurement's window also holds the kernel's tick profile.
pub fn measure_path(path: &Path, duration: Duration, limit: Duration, stop: &Stop, profile: bool) -> PathRun {
    let mut run =
        PathRun { values: vec![None; FIGURES.len()], windows: vec![None; MEASUREMENTS.len()], errors: Vec::new() };
    let keep = |r: Result<Vec<f64>>, at: usize, run: &mut PathRun| match r {
        Ok(v) => v.into_iter().enumerate().for_each(|(i, x)| run.values[at + i] = Some(x)),
        Err(e) => run.errors.push(format!("{e:#}")),
    };
    let (a, b) = (&path.h2g, &path.g2h);
    let mb = |r: &StreamResult| r.bytes as f64 / 1e6;
    let r = windowed(&mut run, 0, b, profile, || tcp_stream(a, b, duration, limit, stop), mb);
    keep(r.map(|r| vec![r.mbit_per_s()]), 0, &mut run);
    let r = windowed(&mut run, 1, b, profile, || tcp_stream(b, a, duration, limit, stop), mb);
    keep(r.map(|r| vec![r.mbit_per_s()]), 1, &mut run);
    let r = windowed(&mut run, 2, b, profile, || udp_rr(a, b, duration, limit, stop), |r| r.transactions as f64);
    keep(r.map(|r| vec![r.per_s()]), 2, &mut run);
    for (k, size, at) in [(3, 64, 3), (4, 20000, 7)] {
        let r = windowed(&mut run, k, b, profile, || icmp_rtt(a, b, size, duration, limit, stop), |s| s.samples as f64);
        keep(r.map(|s| vec![s.min_us, s.median_us, s.mean_us, s.p99_us]), at, &mut run);
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_figures_follow_the_measurements() {
        assert_eq!(FIGURES.len(), FIRST_CPU_FIGURE + MEASUREMENTS.len());
        for (k, m) in MEASUREMENTS.iter().enumerate() {
            let f = &FIGURES[cpu_figure(k)];
            assert_eq!(f.key, format!("cpu_{}", m.key));
            assert_eq!(f.unit, m.cpu_unit);
        }
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
}
