//! ICMPv6 echo over raw sockets: packet building/parsing and a pinger with
//! adaptive pacing (next request when the reply arrived) and a flood mode.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
    SockaddrIn6,
};

use crate::sys::netns;

pub const ICMP6_ECHO_REQUEST: u8 = 128;
pub const ICMP6_ECHO_REPLY: u8 = 129;
const ICMP6_HDR_LEN: usize = 8;
/// `ICMP6_FILTER` socket option (netinet/icmp6.h), level IPPROTO_ICMPV6.
const ICMP6_FILTER: libc::c_int = 1;

/// Build an ICMPv6 echo request; the checksum is left 0 (the kernel fills it
/// in for IPPROTO_ICMPV6 raw sockets).
pub fn build_echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(ICMP6_HDR_LEN + payload.len());
    p.extend_from_slice(&[ICMP6_ECHO_REQUEST, 0, 0, 0]);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An echo message as parsed from the wire.
#[derive(Debug, PartialEq, Eq)]
pub struct Echo<'a> {
    pub kind: u8,
    pub id: u16,
    pub seq: u16,
    pub payload: &'a [u8],
}

/// Parse an ICMPv6 echo request or reply (raw IPv6 sockets deliver the ICMPv6
/// message without the IPv6 header).
pub fn parse_echo(buf: &[u8]) -> Option<Echo<'_>> {
    if buf.len() < ICMP6_HDR_LEN || buf[1] != 0 {
        return None;
    }
    let kind = buf[0];
    if kind != ICMP6_ECHO_REQUEST && kind != ICMP6_ECHO_REPLY {
        return None;
    }
    Some(Echo {
        kind,
        id: u16::from_be_bytes([buf[4], buf[5]]),
        seq: u16::from_be_bytes([buf[6], buf[7]]),
        payload: &buf[ICMP6_HDR_LEN..],
    })
}

/// The payload pattern of request `seq`: differs per sequence number and
/// position, so a reply carrying another request's data or shifted data fails.
pub fn pattern(seq: u16, size: usize) -> Vec<u8> {
    let seq = u32::from(seq);
    (0..size as u32).map(|i| (i.wrapping_mul(31) ^ (i >> 8).wrapping_mul(97) ^ seq.wrapping_mul(7)) as u8).collect()
}

/// Replies of one pinger so far: the ones that carried the data of their
/// request, and the ones that did not.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replies {
    pub verified: u64,
    pub corrupted: u64,
}

/// Shared between a pinger and its owner: a stop flag and the reply
/// counters the owner can wait on. Only verified replies count as traffic
/// flowing; a corrupted one wakes the waiters at once (it fails the test,
/// whatever else happens).
#[derive(Debug, Default)]
pub struct Control {
    stop: AtomicBool,
    replies: Mutex<Replies>,
    cv: Condvar,
}

impl Control {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A reply arrived; `intact`: its payload is the one its request carried.
    fn replied(&self, intact: bool) {
        let mut r = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        if intact {
            r.verified += 1;
        } else {
            r.corrupted += 1;
        }
        drop(r);
        self.cv.notify_all();
    }

    /// Both counters now.
    pub fn counts(&self) -> Replies {
        *self.replies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Verified replies so far.
    pub fn replies(&self) -> u64 {
        self.counts().verified
    }

    /// Wait until at least `n` verified replies arrived, a corrupted one
    /// arrived, or `limit` passed; returns the counters then.
    pub fn wait_replies(&self, n: u64, limit: Duration) -> Replies {
        let g = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, limit, |r| r.verified < n && r.corrupted == 0)
            .unwrap_or_else(|p| p.into_inner());
        *g
    }
}

static NEXT_ID: AtomicU16 = AtomicU16::new(0);

/// A fresh echo identifier (pid mixed with a per-process counter).
pub fn new_identifier() -> u16 {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    (std::process::id() as u16).wrapping_mul(251).wrapping_add(n.wrapping_mul(4099))
}

#[derive(Debug, Clone)]
pub struct PingOpts {
    /// Requests in adaptive mode.
    pub count: u32,
    /// ICMPv6 data bytes per request.
    pub size: usize,
    /// How long to wait for each reply.
    pub timeout: Duration,
    /// Flood for this long instead of `count` adaptive requests.
    pub flood: Option<Duration>,
    /// Requests in flight in flood mode.
    pub window: usize,
}

impl Default for PingOpts {
    fn default() -> Self {
        PingOpts { count: 10, size: 20000, timeout: Duration::from_secs(5), flood: None, window: 8 }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PingStats {
    pub transmitted: u64,
    pub received: u64,
    /// Replies whose payload differed from what was sent.
    pub corrupted: u64,
    /// sendto failures (e.g. the interface went away during a flood).
    pub send_errors: u64,
    /// Flood requests still unanswered (and not yet timed out) when it stopped.
    pub in_flight: u64,
    pub rtt_min: Duration,
    pub rtt_max: Duration,
    rtt_sum: Duration,
}

impl PingStats {
    fn record(&mut self, rtt: Duration) {
        if self.received == 0 || rtt < self.rtt_min {
            self.rtt_min = rtt;
        }
        if rtt > self.rtt_max {
            self.rtt_max = rtt;
        }
        self.rtt_sum += rtt;
        self.received += 1;
    }

    pub fn rtt_avg(&self) -> Duration {
        if self.received == 0 {
            Duration::ZERO
        } else {
            self.rtt_sum / self.received as u32
        }
    }

    /// Loss among the requests that left and were answered or timed out
    /// (send errors are counted apart, and requests still in flight when a
    /// flood stopped are not counted as lost).
    pub fn loss_percent(&self) -> f64 {
        let settled = self.transmitted.saturating_sub(self.in_flight + self.send_errors);
        if settled == 0 {
            100.0
        } else {
            100.0 * settled.saturating_sub(self.received) as f64 / settled as f64
        }
    }

    /// Every request answered with the right data.
    pub fn perfect(&self) -> bool {
        self.transmitted > 0 && self.received == self.transmitted && self.corrupted == 0 && self.send_errors == 0
    }

    /// How many replies came back with other data than their request
    /// carried, if any did.
    pub fn corruption(&self) -> Option<String> {
        (self.corrupted > 0).then(|| {
            format!("{} of {} replies corrupted (data differs from the request's)", self.corrupted, self.received)
        })
    }

    pub fn summary(&self) -> String {
        let in_flight =
            if self.in_flight > 0 { format!(", {} in flight at stop", self.in_flight) } else { String::new() };
        format!(
            "{} transmitted, {} received, {:.1}% loss, {} corrupted, {} send errors{in_flight}, rtt min/avg/max {:.3}/{:.3}/{:.3} ms",
            self.transmitted,
            self.received,
            self.loss_percent(),
            self.corrupted,
            self.send_errors,
            self.rtt_min.as_secs_f64() * 1e3,
            self.rtt_avg().as_secs_f64() * 1e3,
            self.rtt_max.as_secs_f64() * 1e3
        )
    }
}

/// What [`Pinger::timed`] does.
#[derive(Debug, Clone)]
pub struct TimedOpts {
    /// ICMPv6 data bytes per request.
    pub size: usize,
    /// Send requests for this long.
    pub duration: Duration,
    /// A request unanswered this long is lost (and the next one goes out).
    pub reply_wait: Duration,
    /// No reply at all for this long is an error.
    pub stall: Duration,
}

/// The round trips of [`Pinger::timed`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundTrips {
    /// One per answered request, in order.
    pub rtts: Vec<Duration>,
    /// Requests unanswered within `reply_wait`.
    pub lost: u64,
}

/// A raw ICMPv6 socket talking to one link-local peer through one interface.
pub struct Pinger {
    fd: OwnedFd,
    dst: SockaddrIn6,
    peer: Ipv6Addr,
    id: u16,
    buf: Vec<u8>,
    /// Taken next to the syscalls, so that building and checking payloads
    /// stay out of the round-trip times of [`Pinger::timed`].
    sent_at: Instant,
    received_at: Instant,
}

impl Pinger {
    /// Open the socket in the calling thread's namespace. `scope` is the
    /// ifindex for the link-local addresses; `src`, if given, is bound.
    pub fn new(dst: Ipv6Addr, scope: u32, src: Option<Ipv6Addr>) -> Result<Self> {
        let fd = socket(AddressFamily::Inet6, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::IcmpV6)
            .context("socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6)")?;
        // Only echo replies reach this socket (a set bit blocks a type).
        let mut filter = [u32::MAX; 8];
        filter[usize::from(ICMP6_ECHO_REPLY) >> 5] &= !(1u32 << (ICMP6_ECHO_REPLY & 31));
        // SAFETY: `filter` is a valid `struct icmp6_filter` (8 x u32) for the call.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_ICMPV6,
                ICMP6_FILTER,
                filter.as_ptr().cast(),
                std::mem::size_of_val(&filter) as libc::socklen_t,
            )
        };
        Errno::result(ret).context("setsockopt(ICMP6_FILTER)")?;
        // Big replies in flight: give the socket room (root may force it).
        if setsockopt(&fd, sockopt::RcvBufForce, &(4 << 20)).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &(4 << 20));
        }
        if let Some(src) = src {
            let a = SockaddrIn6::from(SocketAddrV6::new(src, 0, 0, scope));
            bind(fd.as_raw_fd(), &a).with_context(|| format!("bind raw ICMPv6 socket to {src}%{scope}"))?;
        }
        Ok(Pinger {
            fd,
            dst: SockaddrIn6::from(SocketAddrV6::new(dst, 0, 0, scope)),
            peer: dst,
            id: new_identifier(),
            buf: vec![0; 65536],
            sent_at: Instant::now(),
            received_at: Instant::now(),
        })
    }

    fn send(&mut self, seq: u16, size: usize) -> Result<(), Errno> {
        let pkt = build_echo_request(self.id, seq, &pattern(seq, size));
        self.sent_at = Instant::now();
        sendto(self.fd.as_raw_fd(), &pkt, &self.dst, MsgFlags::empty()).map(drop)
    }

    /// Wait up to `wait` for one reply of ours; Some((seq, payload ok)).
    fn recv(&mut self, wait: Duration, size: usize) -> Result<Option<(u16, bool)>> {
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
            Ok(0) | Err(Errno::EINTR) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(e).context("poll raw ICMPv6 socket"),
        }
        let (n, from) = match recvfrom::<SockaddrIn6>(self.fd.as_raw_fd(), &mut self.buf) {
            Ok(r) => r,
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return Ok(None),
            Err(e) => return Err(e).context("recvfrom raw ICMPv6 socket"),
        };
        self.received_at = Instant::now();
        if from.map(|a| a.ip()) != Some(self.peer) {
            return Ok(None);
        }
        match parse_echo(&self.buf[..n]) {
            Some(e) if e.kind == ICMP6_ECHO_REPLY && e.id == self.id => {
                let ok = e.payload == pattern(e.seq, size).as_slice();
                Ok(Some((e.seq, ok)))
            }
            _ => Ok(None),
        }
    }

    /// Adaptive: send the next request once the previous reply arrived (or
    /// its timeout passed).
    pub fn adaptive(&mut self, opts: &PingOpts, ctl: &Control) -> Result<PingStats> {
        let mut st = PingStats::default();
        for i in 0..opts.count {
            if ctl.stopped() {
                break;
            }
            let seq = i as u16;
            let sent = Instant::now();
            st.transmitted += 1;
            if let Err(e) = self.send(seq, opts.size) {
                st.send_errors += 1;
                if st.send_errors == 1 {
                    eprintln!("# sendto {}: {e}", self.peer);
                }
                continue;
            }
            loop {
                let left = opts.timeout.saturating_sub(sent.elapsed());
                if left.is_zero() || ctl.stopped() {
                    break;
                }
                match self.recv(left.min(Duration::from_millis(200)), opts.size)? {
                    Some((s, ok)) if s == seq => {
                        st.record(sent.elapsed());
                        ctl.replied(ok);
                        if !ok {
                            st.corrupted += 1;
                        }
                        break;
                    }
                    _ => {}
                }
            }
        }
        Ok(st)
    }

    /// Flood: keep `window` requests in flight until `duration` passed or
    /// `stop` is set. Losses are counted, not fatal.
    pub fn flood(&mut self, opts: &PingOpts, duration: Duration, ctl: &Control) -> Result<PingStats> {
        let mut st = PingStats::default();
        let mut inflight: HashMap<u16, Instant> = HashMap::new();
        let start = Instant::now();
        let mut seq: u16 = 0;
        while start.elapsed() < duration && !ctl.stopped() {
            let mut send_failed = false;
            while inflight.len() < opts.window.max(1) {
                st.transmitted += 1;
                match self.send(seq, opts.size) {
                    Ok(()) => {
                        inflight.insert(seq, Instant::now());
                    }
                    Err(_) => {
                        st.send_errors += 1;
                        send_failed = true;
                    }
                }
                seq = seq.wrapping_add(1);
                if send_failed {
                    break;
                }
            }
            // Waiting on the socket also paces retries after send errors.
            if let Some((s, ok)) = self.recv(Duration::from_millis(50), opts.size)? {
                if let Some(t) = inflight.remove(&s) {
                    st.record(t.elapsed());
                    ctl.replied(ok);
                    if !ok {
                        st.corrupted += 1;
                    }
                }
            }
            inflight.retain(|_, t| t.elapsed() < opts.timeout);
        }
        st.in_flight = inflight.len() as u64;
        Ok(st)
    }

    /// Measurement mode: adaptive (one request in flight, the next once its
    /// reply arrived, or after `reply_wait`, counted lost) for `duration`,
    /// keeping every round trip, timed from just before sendto to just after
    /// recvfrom. Unlike the other modes a corrupted reply, a send error, no
    /// reply at all for `stall`, or `stopped()` ("stopped") end it as errors:
    /// a figure measured over them would be wrong.
    pub fn timed(&mut self, opts: &TimedOpts, stopped: &dyn Fn() -> bool) -> Result<RoundTrips> {
        let mut out = RoundTrips::default();
        let start = Instant::now();
        let mut progress = start;
        let mut seq = 0u16;
        'requests: while start.elapsed() < opts.duration {
            if stopped() {
                anyhow::bail!("stopped");
            }
            seq = seq.wrapping_add(1);
            self.send(seq, opts.size).with_context(|| format!("sendto {}", self.peer))?;
            loop {
                let waited = self.sent_at.elapsed();
                if waited > opts.reply_wait {
                    out.lost += 1;
                    if progress.elapsed() > opts.stall {
                        anyhow::bail!("ICMPv6 echo stalled: no reply for {:.0}s", opts.stall.as_secs_f64());
                    }
                    continue 'requests;
                }
                // In slices, so that a stop request is seen quickly.
                let wait = (opts.reply_wait - waited).min(Duration::from_millis(100)).max(Duration::from_millis(1));
                match self.recv(wait, opts.size)? {
                    Some((s, ok)) if s == seq => {
                        if !ok {
                            anyhow::bail!("ICMPv6 echo reply {seq} carries corrupted data ({} bytes sent)", opts.size);
                        }
                        out.rtts.push(self.received_at - self.sent_at);
                        progress = self.received_at;
                        continue 'requests;
                    }
                    _ if stopped() => anyhow::bail!("stopped"),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    pub fn run(&mut self, opts: &PingOpts, ctl: &Control) -> Result<PingStats> {
        match opts.flood {
            Some(d) => self.flood(opts, d, ctl),
            None => self.adaptive(opts, ctl),
        }
    }
}

/// Where to ping from: a namespace, an interface in it, the peer and
/// optionally our own address (bound as source).
#[derive(Debug, Clone)]
pub struct PingTarget {
    pub netns: Option<String>,
    pub iface: String,
    pub dst: Ipv6Addr,
    pub src: Option<Ipv6Addr>,
}

/// Ping from a dedicated thread inside `target.netns` (blocking).
pub fn ping(target: &PingTarget, opts: &PingOpts, ctl: &Control) -> Result<PingStats> {
    netns::run_in(target.netns.as_deref(), || {
        let scope = crate::net::if_index(&target.iface)?;
        let mut p = Pinger::new(target.dst, scope, target.src)?;
        p.run(opts, ctl)
    })
    .with_context(|| {
        format!(
            "ICMPv6 echo to {}%{} in namespace {}",
            target.dst,
            target.iface,
            target.netns.as_deref().unwrap_or("(current)")
        )
    })
}

/// A ping running in the background (used for floods); stopping is through
/// the shared flag, also on drop.
pub struct BackgroundPing {
    ctl: Arc<Control>,
    handle: Option<std::thread::JoinHandle<Result<PingStats>>>,
}

impl BackgroundPing {
    pub fn start(target: PingTarget, opts: PingOpts) -> Self {
        let ctl = Arc::new(Control::default());
        let c = ctl.clone();
        let handle = std::thread::spawn(move || ping(&target, &opts, &c));
        BackgroundPing { ctl, handle: Some(handle) }
    }

    /// The shared stop flag and reply counter (to wait from another thread).
    pub fn control(&self) -> Arc<Control> {
        self.ctl.clone()
    }

    /// Wait until `n` verified replies came back (the flood is really
    /// flowing), or a corrupted one did; the counters then.
    pub fn wait_replies(&self, n: u64, limit: Duration) -> Replies {
        self.ctl.wait_replies(n, limit)
    }

    /// Stop and collect the statistics.
    pub fn stop(mut self) -> Result<PingStats> {
        self.ctl.stop();
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => anyhow::bail!("ping thread panicked"),
            None => anyhow::bail!("ping already stopped"),
        }
    }
}

impl Drop for BackgroundPing {
    fn drop(&mut self) {
        self.ctl.stop();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let p = build_echo_request(0x1234, 0xabcd, &[9, 8, 7]);
        assert_eq!(p, vec![128, 0, 0, 0, 0x12, 0x34, 0xab, 0xcd, 9, 8, 7]);
    }

    #[test]
    fn parse_reply_roundtrip() {
        let mut p = build_echo_request(7, 3, &pattern(3, 100));
        p[0] = ICMP6_ECHO_REPLY;
        p[2] = 0x55; // checksum as filled by a kernel: ignored
        let e = parse_echo(&p).unwrap();
        assert_eq!((e.kind, e.id, e.seq), (ICMP6_ECHO_REPLY, 7, 3));
        assert_eq!(e.payload, pattern(3, 100).as_slice());
    }

    #[test]
    fn parse_rejects_other_messages() {
        assert!(parse_echo(&[1, 0, 0, 0, 0, 0, 0, 0]).is_none()); // dest unreachable
        assert!(parse_echo(&[129, 1, 0, 0, 0, 0, 0, 0]).is_none()); // bad code
        assert!(parse_echo(&[129, 0, 0]).is_none()); // short
        assert!(parse_echo(&[135, 0, 0, 0, 0, 0, 0, 0]).is_none()); // neighbour solicitation
    }

    #[test]
    fn pattern_depends_on_seq_and_offset() {
        let a = pattern(1, 20000);
        let b = pattern(2, 20000);
        assert_eq!(a.len(), 20000);
        assert_ne!(a, b);
        assert_ne!(a[..256], a[256..512]);
    }

    #[test]
    fn only_verified_replies_count_as_flow() {
        let ctl = Control::default();
        ctl.replied(true);
        ctl.replied(false);
        ctl.replied(true);
        assert_eq!(ctl.replies(), 2);
        assert_eq!(ctl.counts(), Replies { verified: 2, corrupted: 1 });
        // Enough verified replies: no wait.
        assert_eq!(ctl.wait_replies(2, Duration::ZERO).verified, 2);
    }

    #[test]
    fn a_corrupted_reply_ends_the_wait_for_flow() {
        let ctl = Arc::new(Control::default());
        let c = ctl.clone();
        let t = std::thread::spawn(move || {
            c.replied(true);
            c.replied(false);
        });
        let began = Instant::now();
        // Corrupted replies never make up for missing verified ones, and
        // the first one ends the wait (well before the limit).
        let r = ctl.wait_replies(100, Duration::from_secs(60));
        t.join().unwrap();
        assert_eq!(r.corrupted, 1, "{r:?}");
        assert!(r.verified <= 1, "{r:?}");
        assert!(began.elapsed() < Duration::from_secs(30));
        // Without corruption the wait ends at the limit, short of the count.
        let quiet = Control::default();
        quiet.replied(true);
        assert_eq!(quiet.wait_replies(5, Duration::from_millis(10)), Replies { verified: 1, corrupted: 0 });
    }

    #[test]
    fn stats() {
        let mut s = PingStats { transmitted: 4, ..Default::default() };
        s.record(Duration::from_millis(2));
        s.record(Duration::from_millis(4));
        assert_eq!(s.rtt_min, Duration::from_millis(2));
        assert_eq!(s.rtt_max, Duration::from_millis(4));
        assert_eq!(s.rtt_avg(), Duration::from_millis(3));
        assert_eq!(s.loss_percent(), 50.0);
        assert!(!s.perfect());
        assert!(s.summary().contains("4 transmitted, 2 received, 50.0% loss"));
        assert_eq!(s.corruption(), None);
        s.corrupted = 1;
        assert_eq!(s.corruption().unwrap(), "1 of 2 replies corrupted (data differs from the request's)");
        s.corrupted = 0;
        s.in_flight = 2;
        assert_eq!(s.loss_percent(), 0.0);
        assert!(s.summary().contains("2 in flight at stop"), "{}", s.summary());
    }
}
