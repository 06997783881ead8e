//! The command line: every subcommand's options as a clap `Args` struct,
//! the help texts, the RFC program's command line, and the conversions of
//! the options into the types the library runs with.

use std::net::Ipv6Addr;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use vhost_kernel_test::bench::BenchOpts;
use vhost_kernel_test::fuzz::{fresh_seed, FuzzOpts, Limit};
use vhost_kernel_test::net::icmp::{PingOpts, PingTarget};
use vhost_kernel_test::report::{Outputs, ReportOpts};
use vhost_kernel_test::serve::{CloseOrder, ServeOpts, TapOffloads};
use vhost_kernel_test::suite::{self, RunOpts};
use vhost_kernel_test::sys::vhost::FeatureSet;

const ABOUT: &str = "\
Test harness for kernel-buffer vhost: /dev/vhost-net-kernel (vhost-net whose
rings and buffers live in kernel memory) looped back through the vktest vDPA
driver (/dev/vktest) to a virtio-net interface.

Data path: TAP vhostkernelN (h2g) <-> vhost-net <-> vktest <-> virtio_vdpa <->
virtio_net ethN (g2h). Needs root and a kernel with CONFIG_VHOST_KERNEL=y and
CONFIG_VDPA_VKTEST=y; without them `run` and `attach` print every test
as skipped and exit 4.";

const EXAMPLES: &str = "\
Examples:
  vhost-kernel-test run                      # whole suite, KTAP on stdout
  vhost-kernel-test run --list               # test point names
  vhost-kernel-test run --test teardown_unbind --ns-prefix t1-
  vhost-kernel-test attach                   # ABI sanity/negative checks only
  vhost-kernel-test fuzz --duration 60       # random ioctl sequences, errnos checked
  vhost-kernel-test fuzz --seed 7 --phase 3 --count 120   # replay what a failure printed
  vhost-kernel-test run --fake-device        # self-test of the harness on any kernel
  vhost-kernel-test run --repeat 20          # soak: 20 passes, KTAP subtests, stop at a kernel report
  vhost-kernel-test run --fail-fast          # one pass, stop at the first kernel report
  vhost-kernel-test run --junit junit.xml --json summary.json   # KTAP on stdout, CI files at the end
  vhost-kernel-test report results.log --junit junit.xml --json summary.json
  vhost-kernel-test report results.log --junit junit.xml --crash panic.txt --crash-point teardown_exit
      (results.log: the KTAP scripts/vmtest --log-dir keeps; panic.txt: the host's decoded
       kernel report of a guest that died during teardown_exit)
  vhost-kernel-test serve                    # prints: h2g=vhostkernel0 g2h=eth0
  vhost-kernel-test serve --json             # {\"h2g\":...,\"g2h\":...,\"h2g_ifindex\":N,...}
      (SIGTERM/SIGINT: close all and exit 0; SIGUSR1: close /dev/vktest only;
       SIGUSR2: close /dev/vhost-net-kernel only; each prints `closed PATH`)
  vhost-kernel-test ping --netns h2g --iface vhostkernel0 --dst fe80::1
  vhost-kernel-test ping --netns g2h --iface eth0 --dst fe80:: --flood --duration 10
  vhost-kernel-test bench                    # vhost vs veth: TCP, UDP RR, ICMPv6 rtt
  vhost-kernel-test bench --features offloads --json
  vhost_kernel_test [--serve]                # the RFC selftest program's command line (also
      under our name): no arguments runs `attach`; --serve is `serve` (SIGUSR1: close /dev/vktest)

Exit status of run/attach/fuzz: 0 all passed (some skips allowed), 1 a test failed,
4 everything skipped, 130/143 interrupted by SIGINT/SIGTERM. bench: 0 measured,
1 failed, 4 devices missing. report: 0 files written, 2 a file unreadable or not KTAP.";

const FEATURE_SETS: &str = "\
Feature sets (--features SET on run, serve, bench): `rfc` (VIRTIO_F_VERSION_1 |
VIRTIO_F_ACCESS_PLATFORM, the default) or a comma list added to it of csum,
guest_csum, guest_tso4, guest_tso6, host_tso4, host_tso6, mrg_rxbuf (or
`offloads` for all of them) and the ring features indirect_desc, event_idx (or
`ring` for both). vhost-net gets the bits it implements (version_1,
access_platform, mrg_rxbuf and the ring features), vktest (VKTEST_SET_FEATURES)
offers virtio-net the whole set. `busypoll` (or `busypoll=US`) is no feature
bit: both vhost queues busy-poll 50 (or US) microseconds
(VHOST_SET_VRING_BUSYLOOP_TIMEOUT before the attach).";

const FUZZ_ABOUT: &str = "\
Random but valid-shaped sequences of the ioctls of /dev/vhost-net-kernel and
/dev/vktest: opens and closes of both nodes, eventfds, TAPs and /dev/null;
SET_OWNER, GET/SET_FEATURES (random bits), SET_VRING_KICK/CALL and
SET_BACKEND (random indexes, out of range included; fds of the wrong kind,
closed fds, -1), SET/GET_VRING_BUSYLOOP_TIMEOUT, the refused ioctls,
VKTEST_SET_FEATURES, VKTEST_ATTACH_VHOST in random order (also after attach),
NULL arguments, ioctls of the other node, writes and reads of the eventfds
given to the kernel as kicks and calls (also while attached and probing),
and now and then the valid serve wiring (half of the time with busy polling)
so that attaches succeed.

Each call has exactly one right result, given the state of the fds it
involves (owner set, IOTLB, eventfds set, attached, peer closed), which a
model follows from the results so far (the table in src/fuzz/mod.rs): any
other result, or a kernel report, fails the phase, with a replay line and
that state. With --threads N, N threads make the calls in rounds, at the
same time on the same fds: a round's answers must be those of some order
of its calls. KTAP: one test point per phase (fuzz_phase_K); a phase starts
from nothing and ends by closing all and checking that no interface, vdpa
device or fd is left. The seed is the first diagnostic line. Exit: 0 pass,
1 fail, 4 devices (or root) missing.";

const BENCH_ABOUT: &str = "\
Benchmark the kernel-buffer vhost path against a veth pair (same kernel, same
moment). For each feature set (default: rfc, then offloads, offloads,ring and
offloads,ring,busypoll if /dev/vhost-net-kernel and vktest offer them) a
`serve` child is started with that set and TAP offloads derived from it
(busypoll: both vhost queues busy-poll 50 us, VHOST_SET_VRING_BUSYLOOP_TIMEOUT);
its TAP goes to <PREFIX>h2g (fe80::) and its virtio-net interface to
<PREFIX>g2h (fe80::1). The baseline
is a veth pair between <PREFIX>vb-a (fe80::) and <PREFIX>vb-b (fe80::1).

Figures, each measured for --duration seconds by threads of this process
inside the namespaces: TCP stream h2g->g2h and g2h->h2g (bytes counted by the
receiver), UDP 1-byte request/response (one outstanding), ICMPv6 echo round
trip of 64 and 20000 bytes (min/median/p99), and for each of these the guest
CPU time per MB, transaction or echo (/proc/stat). Repetitions alternate vhost
and veth; the table shows medians and the ratio vhost/veth. --profile adds,
per measurement, where each path spent its kernel time (the top functions of
the tick profile, context switches, wake-ups and interrupts per packet). The
features the virtio-net driver negotiated are read from
/sys/bus/virtio/devices/DEV/features and shown, with any that were asked for
but not negotiated.

Exit: 0 everything measured, 1 a figure or set failed, 4 the devices (or root)
are missing.";

const REPORT_ABOUT: &str = "\
Read the KTAP a run wrote (scripts/vmtest's results.log, or what `run` printed)
and write it for CI: --junit FILE (JUnit XML: one <testsuite> for the pass, one
per iteration with --repeat; one <testcase> per test point with its duration
from `# NAME: S s`; <failure> with the quoted kernel report, or the point's
diagnostics, as its text; <skipped> with the reason; diagnostics as
<system-out>) and --json FILE (totals, exit status from `VKT-EXIT: N` when
present, and per point: iteration, number, name, result pass/fail/skip/crash,
duration_s, skip_reason, diagnostics, kernel_report).

A guest that died leaves the output cut short. --crash FILE (the host's
decoded kernel report) with --crash-point NAME (the point whose start marker,
`vhost-kernel-test: sync start-N:NAME`, is the last one in the console log)
adds that point as a failure of type \"kernel crash\" (JSON result \"crash\")
carrying the report; without --crash-point, or if NAME already has a result,
a `kernel_crash` case carries it. Points after it are not invented: the JSON
totals count them as missing. An output cut short with no --crash, or a
`Bail out!`, adds an <error> case (results_incomplete, bail_out), so that a
cut run never reads as green.

Prints one summary line. Exit: 0 written, 2 a file unreadable or not KTAP
(the message names the file and line).";

/// The help of `run`: this text around the table of test points, which
/// comes from the registry ([`suite::registry::help_table`]).
const RUN_ABOUT_HEAD: &str = "\
Run the whole suite, KTAP version 1 on stdout.

First the attach sanity and negative ABI checks (one test point each), then
the teardown scenarios. Each scenario starts `serve` as a child, moves the TAP
(h2g) and the virtio-net interface (g2h) into namespaces <PREFIX>h2g and
<PREFIX>g2h, gives them fe80::/64 and fe80::1/64 (nodad), checks 10 echoes of
20000 bytes each way (0% loss, payload verified, the negotiated features
those asked for), starts a two-way flood, and then tears down while traffic
flows (any corrupted reply fails the point; loss does not). The points, in
order:";

const RUN_ABOUT_TAIL: &str = "\
Any kernel WARNING/BUG/KASAN/UBSAN/lockdep/RCU/kmemleak/hung-task/oops report
logged during a test point fails it (quoted as # lines), and so does a kernel
log that could not be read whole (a marker not seen, records lost). Stale
namespaces with our names are removed first. Each point is followed by
`# NAME: S s` (its duration), each scenario says its time to ready (serve
started until both interfaces are up and addressed in their namespaces), and a
`# timing:` line sums up the pass in guest time. Exit: 0 pass, 1 fail, 4 all
skipped.

--repeat N runs the selected points N times in this process (a soak): each
pass is a KTAP v1 subtest (indented `KTAP version 1`, `1..M`, results), then
`ok K iteration-K` at the top level (plan 1..N). The first kernel report ends
the soak: the rest is reported as skipped. attach_close_loop's 1000 cycles
are spread over the passes (ceil(1000/N) per pass, each pass checking that
nothing is left), so that a soak costs N passes of the scenarios rather than
N x 1000 cycles (159 ms a cycle on a KASAN kernel under TCG); --cycles sets
the count per pass.

--fail-fast stops a single pass the same way: the first point during which
the kernel logged a report fails with it quoted, every point after it is
`ok N NAME # SKIP not run: stopped after a kernel report`, exit 1. Each point
writes `vhost-kernel-test: sync start-N:NAME PID` (start-K.N:NAME in pass K of
--repeat) to the kernel log as it starts, so a console log names the point
that was running when the kernel died.";

/// `run --help`'s long text.
fn run_about() -> String {
    format!("{RUN_ABOUT_HEAD}\n{}{RUN_ABOUT_TAIL}", suite::registry::help_table())
}

#[derive(Parser)]
#[command(name = "vhost-kernel-test", version, about = ABOUT, after_help = format!("{EXAMPLES}\n\n{FEATURE_SETS}"))]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The options of `serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Print the interface line as JSON (with ifindexes and the virtio device).
    #[arg(long)]
    pub json: bool,
    /// Negotiate VHOST_NET_F_VIRTIO_NET_HDR and use a TAP without IFF_VNET_HDR.
    #[arg(long)]
    pub vhost_hdr: bool,
    /// Seconds to wait for the virtio-net interface to appear.
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
    /// Harness self-test: two TAPs bridged in user space stand in for vhost + vktest.
    #[arg(long)]
    pub fake_device: bool,
    /// Feature set: rfc (default) or a comma list (see the end of --help). Its vhost-net
    /// part (version_1, access_platform, mrg_rxbuf, the ring features) goes to VHOST_SET_FEATURES, the
    /// whole set to VKTEST_SET_FEATURES (what vktest offers virtio-net).
    #[arg(long, value_name = "SET", default_value = "rfc")]
    pub features: FeatureSet,
    /// TUNSETOFFLOAD: rfc (CSUM|TSO4|TSO6|TSO_ECN) or derived (from the guest
    /// features: what virtio-net can receive). Default: rfc for the rfc set, else derived.
    #[arg(long, value_name = "MODE")]
    pub tap_offloads: Option<TapOffloads>,
    /// Order of closing the device fds at exit: vhost-first (default) or vktest-first.
    #[arg(long, value_name = "ORDER", default_value = "vhost-first")]
    pub close_order: CloseOrder,
}

/// `serve` alone: what `run` spawns for each scenario. Parsed without
/// building the whole command line (all subcommands), which costs about
/// 25 ms of guest time under TCG, half of the time to ready.
#[derive(Parser)]
#[command(name = "serve", bin_name = "vhost-kernel-test serve", version, about = SERVE_ABOUT, after_help = FEATURE_SETS)]
struct ServeCli {
    #[command(flatten)]
    pub args: ServeArgs,
}

const SERVE_ABOUT: &str =
    "Set up vhost-net-kernel + vktest + TAP, attach, print the interfaces, hold until SIGTERM/SIGINT.";

/// The RFC selftest program's name: installed (or linked) under it, this
/// binary takes that program's command line.
const RFC_NAME: &str = "vhost_kernel_test";

/// What the RFC's `vhost_kernel_test` program was asked to do.
#[derive(Debug, PartialEq, Eq)]
enum RfcCall {
    /// No arguments: the attach sanity check, its verdict as exit status.
    AttachCheck,
    /// `--serve`: set up, attach, hold until killed; SIGUSR1 closes /dev/vktest.
    Serve,
}

/// The RFC program's command line, if `args` (argv[0] first) is one: no
/// arguments, or `--serve`. Under the RFC's name the options are read the
/// way its getopt_long_only() did (one or two dashes, any prefix of
/// "serve", repeated or not); under our own name only `--serve` itself.
fn rfc_call(args: &[std::ffi::OsString]) -> Option<RfcCall> {
    let rest = args.get(1..).unwrap_or_default();
    if rest.is_empty() {
        return Some(RfcCall::AttachCheck);
    }
    let rfc_name = args.first().and_then(|a| std::path::Path::new(a).file_name()).is_some_and(|n| n == RFC_NAME);
    let is_serve = |a: &std::ffi::OsString| {
        let a = a.to_string_lossy();
        if !rfc_name {
            return a == "--serve";
        }
        let opt = a.strip_prefix("--").or_else(|| a.strip_prefix('-')).unwrap_or("");
        !opt.is_empty() && "serve".starts_with(opt)
    };
    if (rfc_name || rest.len() == 1) && rest.iter().all(is_serve) {
        return Some(RfcCall::Serve);
    }
    None
}

/// The command line; `serve` takes the short way ([`ServeCli`]), the RFC
/// program's command line ([`rfc_call`]) maps onto `attach` and `serve`.
pub fn parse() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match rfc_call(&args) {
        Some(RfcCall::AttachCheck) => return Cli { cmd: Cmd::Attach },
        Some(RfcCall::Serve) => {
            let serve = ServeCli::parse_from([RFC_NAME]);
            return Cli { cmd: Cmd::Serve(serve.args) };
        }
        None => {}
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "serve") {
        let serve = ServeCli::parse_from(std::env::args_os().skip(1));
        return Cli { cmd: Cmd::Serve(serve.args) };
    }
    let cmd = Cli::command().mut_subcommand("run", |run| run.long_about(run_about()));
    Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit())
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the whole suite (attach checks, then teardown scenarios under traffic), KTAP on stdout.
    Run(RunArgs),
    /// Only the attach sanity and negative ABI checks, KTAP on stdout.
    Attach,
    /// Print the kernel reports (WARN, BUG, KASAN, lockdep, RCU stall, soft lockup...) of a
    /// console log or dmesg, with their context. Exit: 0 clean, 1 a report, 2 unreadable.
    ScanLog(ScanLogArgs),
    /// Random valid-shaped ioctl sequences on both nodes; every errno must be an allowed one.
    #[command(long_about = FUZZ_ABOUT)]
    Fuzz(FuzzArgs),
    /// Set up vhost-net-kernel + vktest + TAP, attach, print the interfaces, hold until SIGTERM/SIGINT.
    Serve(ServeArgs),
    /// Internal (attach_by_non_owner_eperm): VKTEST_ATTACH_VHOST on two fds
    /// inherited from the parent; prints `ok` or `errno N`.
    #[command(hide = true)]
    AttachFd(AttachFdArgs),
    /// Internal (open_needs_cap_net_admin*): give up privilege, then open
    /// each path; prints one `KEY<TAB>ok|errno N` line per step.
    #[command(hide = true)]
    OpenProbe(OpenProbeArgs),
    /// Write a run's KTAP (results.log) as JUnit XML and/or a JSON summary, for CI.
    #[command(long_about = REPORT_ABOUT)]
    Report(ReportArgs),
    /// Throughput and latency of the vhost path vs a veth pair (table, or --json).
    #[command(long_about = BENCH_ABOUT)]
    Bench(BenchArgs),
    /// ICMPv6 echo over a raw socket from inside a network namespace.
    Ping(PingArgs),
}

/// The options of `run`.
#[derive(Args)]
pub struct RunArgs {
    /// Namespace name prefix: namespaces are <PREFIX>h2g and <PREFIX>g2h.
    #[arg(long, default_value = "")]
    pub ns_prefix: String,
    /// Limit, in seconds, of every wait (netlink events, child, replies).
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
    /// ICMPv6 data bytes per echo (20000 exceeds the MTU: fragmentation).
    #[arg(long, default_value_t = 20000)]
    pub size: usize,
    /// Adaptive echoes per direction in each traffic check.
    #[arg(long, default_value_t = 10)]
    pub count: u32,
    /// Echo requests in flight per flood direction.
    #[arg(long, default_value_t = 4)]
    pub flood_window: usize,
    /// Run only this test point (repeatable); see --list.
    #[arg(long = "test", value_name = "NAME")]
    pub tests: Vec<String>,
    /// Print the test point names and exit.
    #[arg(long)]
    pub list: bool,
    /// Harness self-test on any kernel: serve uses two TAPs bridged in user
    /// space; tests needing the real devices are skipped.
    #[arg(long)]
    pub fake_device: bool,
    /// Feature set of the serving child (see the end of --help).
    #[arg(long, value_name = "SET")]
    pub features: Option<FeatureSet>,
    /// Run every selected test point N times in this process: KTAP subtest
    /// iteration-K per pass; stops at the first kernel report.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: Option<u32>,
    /// Stop at the first test point during which the kernel logged a report
    /// (WARN, BUG, KASAN, lockdep, leak...): it fails with the report quoted,
    /// the points after it are skipped. --repeat always stops so.
    #[arg(long)]
    pub fail_fast: bool,
    /// At the end, also write the run's results as JUnit XML to FILE (see `report --help`).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<std::path::PathBuf>,
    /// At the end, also write a JSON summary of the run to FILE (see `report --help`).
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// Open/wire/attach/close cycles of attach_close_loop, per pass. Default:
    /// 1000; with --repeat N, 1000 spread over the passes (ceil(1000/N) each).
    #[arg(long, value_name = "N")]
    pub cycles: Option<u32>,
    /// Harness self-test: read the kernel log from this path instead of /dev/kmsg.
    #[arg(long, value_name = "PATH", hide = true, default_value = vhost_kernel_test::sys::kmsg::KMSG_PATH)]
    pub kmsg_path: String,
    /// Do not watch /dev/kmsg (where it cannot be read): kernel reports
    /// then go unnoticed. Without it, an unreadable kernel log stops the run (exit 1).
    #[arg(long)]
    pub no_kernel_log: bool,
    /// Fail (exit 1) instead of leaving kmemleak_check out when the kernel has
    /// no usable kmemleak: what `scripts/vmtest --debug` asks of its debug kernel.
    #[arg(long)]
    pub require_leak_check: bool,
    /// Harness self-test: `# step: NAME` diagnostics as scenarios reach their steps.
    #[arg(long, hide = true)]
    pub progress: bool,
}

/// The options of `fuzz`.
#[derive(Args)]
pub struct FuzzArgs {
    /// Seed of the generator (printed as `# seed: S`; default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run for this many seconds (10 phases).
    #[arg(long, value_name = "SECS", conflicts_with = "count")]
    pub duration: Option<f64>,
    /// Make this many calls (phases of 250; default 2000).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Replay one phase alone (with the --seed and --count it printed).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    pub phase: Option<u64>,
    /// Limit, in seconds, of every wait.
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
    /// Threads making the calls at once, on the same objects (1: one call
    /// at a time, each with its one right answer; more: rounds of
    /// concurrent calls, right if some order of them explains the answers).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub threads: u64,
    /// Harness self-test: read the kernel log from this path instead of /dev/kmsg.
    #[arg(long, value_name = "PATH", hide = true, default_value = vhost_kernel_test::sys::kmsg::KMSG_PATH)]
    pub kmsg_path: String,
    /// Do not watch /dev/kmsg (where it cannot be read): kernel reports
    /// then go unnoticed. Without it, an unreadable kernel log stops the run (exit 1).
    #[arg(long)]
    pub no_kernel_log: bool,
}

/// The options of `bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Seconds of each measurement (each figure, each repetition, each path).
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub reps: u32,
    /// Only this feature set (default: rfc, offloads, offloads,ring and offloads,ring,busypoll).
    #[arg(long, value_name = "SET")]
    pub features: Option<FeatureSet>,
    /// One JSON object on stdout instead of the table (no progress on stderr).
    #[arg(long)]
    pub json: bool,
    /// Namespace name prefix (<PREFIX>h2g, <PREFIX>g2h, <PREFIX>vb-a, <PREFIX>vb-b).
    #[arg(long, default_value = "")]
    pub ns_prefix: String,
    /// Limit, in seconds, of every wait (setup, and stalled traffic).
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
    /// Harness self-test: serve --fake-device (TAPs bridged in user space) as the "vhost" path.
    #[arg(long)]
    pub fake_device: bool,
    /// Also show where each path spends its time, measurement by measurement,
    /// vhost and veth side by side: the top kernel functions by tick samples
    /// (/proc/profile) and the context switches, wake-ups and interrupts per
    /// packet. Needs the profiling kernel (CONFIG_PROFILING, CONFIG_SCHEDSTATS,
    /// booted with profile=2), which `scripts/vmtest -- bench --profile`
    /// builds and boots by itself.
    #[arg(long)]
    pub profile: bool,
}

/// The options of `ping`.
#[derive(Args)]
pub struct PingArgs {
    /// Named network namespace (/run/netns/NAME); default: the current one.
    #[arg(long)]
    pub netns: Option<String>,
    /// Interface to send on (scope of the link-local addresses).
    #[arg(long)]
    pub iface: String,
    /// Destination address, e.g. fe80::1.
    #[arg(long)]
    pub dst: Ipv6Addr,
    /// Source address to bind, e.g. fe80:: (default: kernel's choice).
    #[arg(long)]
    pub src: Option<Ipv6Addr>,
    /// Adaptive requests (next one when the reply arrived).
    #[arg(long, default_value_t = 10)]
    pub count: u32,
    /// ICMPv6 data bytes per request.
    #[arg(long, default_value_t = 20000)]
    pub size: usize,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
    /// Flood: many requests in flight for --duration seconds.
    #[arg(long)]
    pub flood: bool,
    /// Flood duration in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Requests in flight when flooding.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
}

/// The arguments of `report`.
#[derive(Args)]
pub struct ReportArgs {
    /// The KTAP the harness wrote (scripts/vmtest's results.log).
    pub file: std::path::PathBuf,
    /// Write JUnit XML to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<std::path::PathBuf>,
    /// Write the JSON summary to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// The host's decoded kernel report of a guest that died (panic, hang).
    #[arg(long, value_name = "FILE")]
    pub crash: Option<std::path::PathBuf>,
    /// The test point the guest died in (the last `sync start-N:NAME` marker of the console log).
    #[arg(long, value_name = "NAME", requires = "crash")]
    pub crash_point: Option<String>,
}

impl From<ReportArgs> for ReportOpts {
    fn from(a: ReportArgs) -> Self {
        ReportOpts {
            input: a.file,
            outputs: Outputs { junit: a.junit, json: a.json },
            crash: a.crash,
            crash_point: a.crash_point,
        }
    }
}

/// The argument of `scan-log`.
#[derive(Args)]
pub struct ScanLogArgs {
    /// The console log or dmesg output to read (`-`: stdin).
    pub file: std::path::PathBuf,
    /// Read the log as it is written (e.g. from `tail -F`) and stop at the
    /// first report line: print `LINE-NUMBER:TEXT` of it and exit 1; exit 0
    /// at the end of the input without a report. scripts/vmtest uses it to
    /// fail fast.
    #[arg(long)]
    pub watch: bool,
}

/// The fds `attach-fd` inherits.
#[derive(Args)]
pub struct AttachFdArgs {
    #[arg(long)]
    pub vktest_fd: i32,
    #[arg(long)]
    pub vhost_fd: i32,
}

/// What `open-probe` does.
#[derive(Args)]
pub struct OpenProbeArgs {
    /// root (keep every privilege), no-cap-net-admin, or user-ns.
    #[arg(long = "as", value_name = "HOW")]
    pub how: vhost_kernel_test::suite::contract_v2::Unprivileged,
    /// The paths to open read-only.
    pub paths: Vec<String>,
}

/// A positive, finite number of seconds.
fn seconds(value: f64, option: &str) -> Result<Duration> {
    anyhow::ensure!(value.is_finite() && value > 0.0, "{option} must be a positive number of seconds");
    Ok(Duration::from_secs_f64(value))
}

impl RunArgs {
    /// Where `run --junit/--json` writes.
    pub fn outputs(&self) -> Outputs {
        Outputs { junit: self.junit.clone(), json: self.json.clone() }
    }

    /// The options the suite runs with (the selection of points is the
    /// suite's: [`vhost_kernel_test::suite::select`]).
    pub fn opts(&self) -> RunOpts {
        RunOpts {
            ns_prefix: self.ns_prefix.clone(),
            timeout: Duration::from_secs(self.timeout),
            size: self.size,
            count: self.count,
            flood_window: self.flood_window,
            fake_device: self.fake_device,
            features: self.features.as_ref().map(|f| f.name.clone()),
            kmsg_path: if self.no_kernel_log { String::new() } else { self.kmsg_path.clone() },
            cycles: self
                .cycles
                .unwrap_or_else(|| vhost_kernel_test::suite::races::cycles_per_pass(self.repeat.unwrap_or(1))),
            progress: self.progress,
            fail_fast: self.fail_fast,
            ..Default::default()
        }
    }
}

impl TryFrom<FuzzArgs> for FuzzOpts {
    type Error = anyhow::Error;

    fn try_from(a: FuzzArgs) -> Result<Self> {
        let limit = match a.duration {
            Some(d) => Limit::Duration(seconds(d, "--duration")?),
            None => Limit::Count(a.count.unwrap_or(2000)),
        };
        Ok(FuzzOpts {
            seed: a.seed.unwrap_or_else(fresh_seed),
            limit,
            phase: a.phase,
            timeout: Duration::from_secs(a.timeout),
            kmsg_path: if a.no_kernel_log { String::new() } else { a.kmsg_path },
            threads: a.threads as usize,
        })
    }
}

impl From<ServeArgs> for ServeOpts {
    fn from(a: ServeArgs) -> Self {
        ServeOpts {
            json: a.json,
            vhost_hdr: a.vhost_hdr,
            timeout: Duration::from_secs(a.timeout),
            fake: a.fake_device,
            features: a.features,
            tap_offloads: a.tap_offloads,
            close_order: a.close_order,
        }
    }
}

impl TryFrom<BenchArgs> for BenchOpts {
    type Error = anyhow::Error;

    fn try_from(a: BenchArgs) -> Result<Self> {
        Ok(BenchOpts {
            duration: seconds(a.duration, "--duration")?,
            reps: a.reps,
            features: a.features,
            json: a.json,
            ns_prefix: a.ns_prefix,
            timeout: Duration::from_secs(a.timeout),
            fake_device: a.fake_device,
            profile: a.profile,
            ..Default::default()
        })
    }
}

impl PingArgs {
    /// Where to ping from and to, and how.
    pub fn into_parts(self) -> (PingTarget, PingOpts) {
        let target = PingTarget { netns: self.netns, iface: self.iface, dst: self.dst, src: self.src };
        let opts = PingOpts {
            count: self.count,
            size: self.size,
            timeout: Duration::from_secs(self.timeout),
            flood: self.flood.then(|| Duration::from_secs(self.duration)),
            window: self.window,
        };
        (target, opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(args: &[&str]) -> Option<RfcCall> {
        rfc_call(&args.iter().map(std::ffi::OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn the_rfc_programs_command_line_is_accepted() {
        // What the RFC's shell script runs, under our name and under its own.
        for exe in ["vhost-kernel-test", "./vhost_kernel_test", "/usr/bin/vhost_kernel_test"] {
            assert_eq!(call(&[exe]), Some(RfcCall::AttachCheck), "{exe}");
            assert_eq!(call(&[exe, "--serve"]), Some(RfcCall::Serve), "{exe}");
        }
        // getopt_long_only(): one dash, prefixes, repeats, only under the RFC's name.
        for a in [&["-serve"][..], &["-s"], &["--ser"], &["--serve", "-serve"]] {
            let args: Vec<&str> = std::iter::once("./vhost_kernel_test").chain(a.iter().copied()).collect();
            assert_eq!(call(&args), Some(RfcCall::Serve), "{a:?}");
            let args: Vec<&str> = std::iter::once("vhost-kernel-test").chain(a.iter().copied()).collect();
            assert_eq!(call(&args), None, "{a:?}");
        }
        // Everything else is our own command line.
        for a in [&["serve"][..], &["run", "--test", "teardown_exit"], &["--servex"], &["-"], &["--"], &["--help"]] {
            let args: Vec<&str> = std::iter::once("./vhost_kernel_test").chain(a.iter().copied()).collect();
            assert_eq!(call(&args), None, "{a:?}");
        }
    }

    #[test]
    fn fail_fast_reaches_the_run_options() {
        let opts = |args: &[&str]| match Cli::try_parse_from(args).unwrap().cmd {
            Cmd::Run(r) => r.opts(),
            _ => panic!("not run"),
        };
        assert!(opts(&["vhost-kernel-test", "run", "--fail-fast"]).fail_fast);
        assert!(!opts(&["vhost-kernel-test", "run"]).fail_fast);
    }

    #[test]
    fn the_rfc_serve_is_our_serve_with_its_defaults() {
        let rfc = ServeCli::parse_from([RFC_NAME]).args;
        assert!(!rfc.json && !rfc.vhost_hdr && !rfc.fake_device && rfc.features.is_rfc());
        assert!(rfc.tap_offloads.is_none() && rfc.close_order == CloseOrder::VhostFirst);
    }
}
