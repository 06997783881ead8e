//! `bench` on the build host (as root): the measurement code over a real veth
//! pair in namespaces, the whole CLI with `--fake-device` standing in for the
//! vhost path, cleanup on SIGTERM, and the skip/exit paths. The tests that
//! need root are `#[ignore = "needs root"]` (`cargo test -- --include-ignored`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use vhost_kernel_test::bench::{icmp_rtt, measure_path, setup_veth, tcp_stream, udp_rr, Stop, StopOnDrop, FIGURES};
use vhost_kernel_test::netns::{self, NetnsGuard};

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
                measure_path(&p2, Duration::from_millis(200), T, &s2),
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
        assert!(all.values.iter().all(|v| v.is_some_and(|x| x > 0.0)), "{:?}", all.values);

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
    assert!(
        text.starts_with("{\"duration_s\":0.3,\"reps\":2,\"fake_device\":true,\"clock_granularity_us\":"),
        "{text}"
    );
    assert!(text.contains("\"name\":\"rfc\",\"features\":\"0x300000000\""), "{text}");
    assert!(text.contains("\"errors\":[]") && text.contains("\"skipped\":null"), "{text}");
    for f in FIGURES {
        let at = text.find(&format!("\"key\":\"{}\"", f.key)).unwrap_or_else(|| panic!("{} missing: {text}", f.key));
        let rest = &text[at..];
        assert!(!rest[..rest.find('}').unwrap()].contains("null"), "{} has a missing value: {text}", f.key);
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
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("{\"skipped\":\""));
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
