//! `bench` on the build host (as root): the measurement code over a real veth
//! pair in namespaces, the whole CLI with `--fake-device` standing in for the
//! vhost path, cleanup on SIGTERM, and the skip/exit paths. The tests that
//! need root are `#[ignore = "needs root"]` (`cargo test -- --include-ignored`).

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
    SockaddrIn6,
};
use nix::sys::time::TimeVal;
use serde_json::Value;
use vhost_kernel_test::bench::figures::{icmp_rtt, measure_path, tcp_stream, udp_rr, Stop, StopOnDrop, FIGURES};
use vhost_kernel_test::bench::profile::MEASUREMENTS;
use vhost_kernel_test::bench::setup_veth;
use vhost_kernel_test::net::icmp::{build_echo_request, parse_echo, ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST};
use vhost_kernel_test::sys::netns::{self, NetnsGuard};

const T: Duration = Duration::from_secs(10);
const EXE: &str = env!("CARGO_BIN_EXE_vhost-kernel-test");

fn tag(what: &str) -> String {
    format!("vkb{what}{}-", std::process::id() % 100_000)
}

fn gone(prefix: &str) -> bool {
    ["h2g", "g2h", "vb-a", "vb-b"].iter().all(|n| !netns::exists(&format!("{prefix}{n}")))
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "needs root"]
async fn veth_path_tcp_udp_icmp() {
    let p = tag("m");
    let (a, b) = (format!("{p}vb-a"), format!("{p}vb-b"));
    {
        let mut g = NetnsGuard::new();
        g.create(&a).unwrap();
        g.create(&b).unwrap();
        let path = setup_veth(&a, &b, T).await.unwrap();
        assert_eq!((path.h2g.ns.as_str(), path.g2h.ns.as_str()), (a.as_str(), b.as_str()));
        let stop = Stop::new();
        let d = Duration::from_millis(300);
        let (p2, s2) = (path.clone(), stop.clone());
        let (fwd, back, rr, small, big, all) = tokio::task::spawn_blocking(move || {
            (
                tcp_stream(&p2.h2g, &p2.g2h, d, T, &s2).unwrap(),
                tcp_stream(&p2.g2h, &p2.h2g, d, T, &s2).unwrap(),
                udp_rr(&p2.h2g, &p2.g2h, d, T, &s2).unwrap(),
                icmp_rtt(&p2.h2g, &p2.g2h, 64, d, T, &s2).unwrap(),
                icmp_rtt(&p2.h2g, &p2.g2h, 20000, d, T, &s2).unwrap(),
                measure_path(&p2, Duration::from_millis(200), T, &s2, false),
            )
        })
        .await
        .unwrap();
        // The receiver counted what was sent for ~300 ms.
        assert!(fwd.bytes > 100_000 && fwd.elapsed >= Duration::from_millis(200), "{fwd:?}");
        assert!(back.bytes > 100_000 && back.mbit_per_s() > 1.0, "{back:?}");
        assert!(rr.transactions > 10 && rr.lost == 0 && rr.per_s() > 30.0, "{rr:?}");
        assert!(small.samples > 10 && small.lost == 0, "{small:?}");
        assert!(small.min_us <= small.median_us && small.median_us <= small.p99_us, "{small:?}");
        assert!(big.samples > 5 && big.min_us > 0.0, "{big:?}");
        assert!(all.errors.is_empty(), "{:?}", all.errors);
        assert_eq!(all.values.len(), FIGURES.len());
        let (rates, cpu) = all.values.split_at(FIGURES.len() - MEASUREMENTS.len());
        assert!(rates.iter().all(|v| v.is_some_and(|x| x > 0.0)), "{:?}", all.values);
        // CPU per unit of work: /proc/stat counts 10 ms ticks, so a short
        // window may see none, but every window was read.
        assert!(cpu.iter().all(|v| v.is_some_and(|x| x >= 0.0)), "{:?}", all.values);
        for (w, m) in all.windows.iter().zip(MEASUREMENTS) {
            let w = w.as_ref().unwrap_or_else(|| panic!("no counter window for {}", m.label));
            assert!(w.packets > 0 && w.units > 0.0 && w.counters.context_switches > 0, "{}: {w:?}", m.label);
            assert!(w.hits.is_empty(), "no profile asked");
        }

        // A stop request ends a measurement early, as an error.
        let (p3, s3) = (path.clone(), stop.clone());
        drop(StopOnDrop(stop));
        let err = tokio::task::spawn_blocking(move || tcp_stream(&p3.h2g, &p3.g2h, Duration::from_secs(30), T, &s3))
            .await
            .unwrap()
            .unwrap_err();
        assert!(format!("{err:#}").contains("stopped"), "{err:#}");
        g.delete_all().unwrap();
    }
    assert!(gone(&p));
}

/// Answers ICMPv6 echo requests in the calling thread's namespace in place of
/// the kernel (whose own answers it turns off there), with the first data
/// byte flipped when `corrupt`, until `stop`; the number answered.
fn echo_responder(corrupt: bool, ready: mpsc::Sender<()>, stop: &AtomicBool) -> anyhow::Result<u64> {
    std::fs::write("/proc/sys/net/ipv6/icmp/echo_ignore_all", "1")?;
    let fd = socket(AddressFamily::Inet6, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::IcmpV6)?;
    // The receive timeout only lets the loop see `stop`.
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 100_000))?;
    ready.send(())?;
    let mut buf = vec![0u8; 65536];
    let mut answered = 0;
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match recvfrom::<SockaddrIn6>(fd.as_raw_fd(), &mut buf) {
            Ok((n, Some(from))) => (n, from),
            Ok((_, None)) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let Some(e) = parse_echo(&buf[..n]).filter(|e| e.kind == ICMP6_ECHO_REQUEST) else { continue };
        let mut data = e.payload.to_vec();
        if corrupt {
            data[0] ^= 0xff;
        }
        // The kernel fills in the checksum: the reply is valid, only its data is wrong.
        let mut reply = build_echo_request(e.id, e.seq, &data);
        reply[0] = ICMP6_ECHO_REPLY;
        sendto(fd.as_raw_fd(), &reply, &from, MsgFlags::empty())?;
        answered += 1;
    }
    Ok(answered)
}

/// The round-trip figure fails on a reply whose data differs from the
/// request's (a figure measured over a broken path would be wrong), and not
/// on the same replies with the data intact.
#[tokio::test(flavor = "current_thread")]
#[ignore = "needs root"]
async fn icmp_rtt_fails_on_corrupted_replies() {
    let p = tag("c");
    let (a, b) = (format!("{p}vb-a"), format!("{p}vb-b"));
    {
        let mut g = NetnsGuard::new();
        g.create(&a).unwrap();
        g.create(&b).unwrap();
        let path = setup_veth(&a, &b, T).await.unwrap();
        let d = Duration::from_millis(300);
        let rtt_with = |corrupt: bool| {
            let stop = AtomicBool::new(false);
            let (tx, rx) = mpsc::channel();
            std::thread::scope(|s| {
                let responder = netns::spawn_in(s, &b, "responder", || echo_responder(corrupt, tx, &stop)).unwrap();
                rx.recv_timeout(T).expect("responder ready");
                let r = icmp_rtt(&path.h2g, &path.g2h, 64, d, T, &Stop::new());
                stop.store(true, Ordering::Relaxed);
                (r, responder.join().unwrap().unwrap())
            })
        };
        let (good, answered) = rtt_with(false);
        let good = good.unwrap();
        assert!(good.samples > 10 && good.samples as u64 <= answered, "{good:?}, {answered} answered");
        let (bad, answered) = rtt_with(true);
        let err = format!("{:#}", bad.unwrap_err());
        assert!(err.contains("corrupted data") && err.contains("ICMPv6 echo 64 bytes"), "{err}");
        assert_eq!(answered, 1, "the first corrupted reply ends the figure");
        // With nobody answering (the kernel does not here), no figure either.
        let err = format!("{:#}", icmp_rtt(&path.h2g, &path.g2h, 64, d, T, &Stop::new()).unwrap_err());
        assert!(err.contains("no ICMPv6 echo reply at all"), "{err}");
        g.delete_all().unwrap();
    }
    assert!(gone(&p));
}

#[test]
#[ignore = "needs root"]
fn bench_fake_device_json_and_cleanup() {
    let p = tag("j");
    let out = Command::new(EXE)
        .args(["bench", "--fake-device", "--duration", "0.3", "--reps", "2", "--features", "rfc", "--json"])
        .args(["--ns-prefix", &p, "--timeout", "10"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.lines().count(), 1, "one JSON line: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(
        (v["duration_s"].as_f64(), v["reps"].as_u64(), v["fake_device"].as_bool()),
        (Some(0.3), Some(2), Some(true))
    );
    assert!(v["clock_granularity_us"].as_f64().is_some_and(|g| g > 0.0), "{text}");
    let sets = v["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 1, "{text}");
    let set = &sets[0];
    assert_eq!((set["name"].as_str(), set["features"].as_str()), (Some("rfc"), Some("0x300000000")), "{text}");
    assert_eq!(set["errors"], serde_json::json!([]), "{text}");
    assert!(set["skipped"].is_null(), "{text}");
    let figures = set["figures"].as_array().unwrap();
    assert_eq!(figures.len(), FIGURES.len(), "{text}");
    for (f, j) in FIGURES.iter().zip(figures) {
        assert_eq!(j["key"].as_str(), Some(f.key), "{text}");
        for k in ["vhost", "veth", "ratio"] {
            assert!(j[k].as_f64().is_some_and(|x| x > 0.0), "{} {k} is not a positive number: {text}", f.key);
        }
        for k in ["vhost_reps", "veth_reps"] {
            let reps = j[k].as_array().unwrap();
            assert!(reps.len() == 2 && reps.iter().all(|r| r.as_f64().is_some()), "{} {k}: {text}", f.key);
        }
    }
    assert!(out.stderr.is_empty(), "--json prints no progress: {}", String::from_utf8_lossy(&out.stderr));
    assert!(gone(&p));
}

#[test]
#[ignore = "needs root"]
fn bench_table_and_sigterm_cleanup() {
    let p = tag("s");
    let mut child = Command::new(EXE)
        .args(["bench", "--fake-device", "--duration", "5", "--reps", "1", "--features", "rfc"])
        .args(["--ns-prefix", &p, "--timeout", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Progress goes to stderr; once the first measurement started, everything exists.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        seen.push(l.clone());
        if l.contains("repetition 1/1: vhost") {
            break;
        }
    }
    assert!(seen.last().is_some_and(|l| l.contains("repetition 1/1: vhost")), "{seen:?}");
    assert!(netns::exists(&format!("{p}h2g")) && netns::exists(&format!("{p}vb-b")));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(143), "{text}");
    assert!(text.contains("interrupted by SIGTERM"), "{text}");
    assert!(gone(&p), "namespaces left behind");
}

#[test]
fn bench_without_the_feature_skips_with_a_reason() {
    if std::path::Path::new("/dev/vhost-net-kernel").exists() && std::path::Path::new("/dev/vktest").exists() {
        eprintln!("this kernel has the feature: skip path not testable here");
        return;
    }
    let out = Command::new(EXE).args(["bench", "--duration", "1"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.starts_with("bench: skipped: "), "{text}");
    assert!(text.contains("missing (CONFIG_VHOST_KERNEL") || text.contains("not root"), "{text}");
    let out = Command::new(EXE).args(["bench", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["skipped"].as_str().is_some_and(|why| !why.is_empty()), "{v}");
}

#[test]
fn feature_sets_on_the_command_line() {
    let out = Command::new(EXE).args(["serve", "--features", "csum,tso"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown feature \"tso\"") && err.contains("guest_tso4"), "{err}");
    let out = Command::new(EXE).args(["serve", "--tap-offloads", "all"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(EXE).args(["bench", "--reps", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(EXE).args(["bench", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for w in ["--duration", "--reps", "--features", "--json", "vb-a", "vhost/veth", "/sys/bus/virtio/devices"] {
        assert!(help.contains(w), "bench --help lacks {w}:\n{help}");
    }
    if !std::path::Path::new("/dev/vhost-net-kernel").exists() {
        let out = Command::new(EXE)
            .args(["serve", "--features", "offloads", "--tap-offloads", "derived", "--timeout", "1"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("/dev/vhost-net-kernel") && !err.contains("panicked"), "{err}");
    }
}
