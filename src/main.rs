//! vhost-kernel-test: the binary. The command line is in cli.rs; what each
//! subcommand does is in the library (see lib.rs for the map).

mod cli;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use tokio::signal::unix::{signal, SignalKind};

use cli::{Cli, Cmd};
use vhost_kernel_test::net::icmp::{self, Control};
use vhost_kernel_test::report::{write_run_outputs, Capture};
use vhost_kernel_test::suite::{self, run_tests, run_tests_repeated, RunOpts};

/// Run `fut`; on SIGINT/SIGTERM drop it (its guards clean up) and return 130/143.
async fn interruptible(fut: impl std::future::Future<Output = i32>) -> Result<i32> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        code = fut => code,
        _ = int.recv() => { println!("# interrupted by SIGINT, cleaned up"); 130 }
        _ = term.recv() => { println!("# interrupted by SIGTERM, cleaned up"); 143 }
    })
}

/// `ping`: in a blocking thread, stopped by SIGINT; exit 0 when every echo
/// came back intact (a flood: some replies and none corrupted).
async fn ping(args: cli::PingArgs) -> Result<i32> {
    let flood = args.flood;
    let (target, opts) = args.into_parts();
    let stop = Arc::new(Control::default());
    let flag = stop.clone();
    let worker = tokio::task::spawn_blocking(move || icmp::ping(&target, &opts, &flag));
    let mut int = signal(SignalKind::interrupt())?;
    tokio::pin!(worker);
    let res = tokio::select! {
        r = &mut worker => r?,
        _ = int.recv() => { stop.stop(); worker.await? }
    };
    let st = res?;
    println!("{}", st.summary());
    Ok(if (flood && st.received > 0 && st.corrupted == 0) || st.perfect() { 0 } else { 1 })
}

async fn real_main(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Run(args) => {
            if args.list {
                suite::list().iter().for_each(|t| println!("{t}"));
                return Ok(0);
            }
            let opts = args.opts();
            if args.require_leak_check {
                if let Some(why) = vhost_kernel_test::sys::kmsg::kmemleak_unavailable() {
                    anyhow::bail!("--require-leak-check: {why}");
                }
            }
            let selected = suite::select(&args.tests, args.fake_device)?;
            // With --junit/--json, keep a copy of the KTAP to write them from at the end.
            let outputs = args.outputs();
            let mut out = Capture::new(std::io::stdout());
            let code = match args.repeat {
                Some(n) => interruptible(run_tests_repeated(&selected, &opts, n as usize, &mut out)).await?,
                None => interruptible(run_tests(&selected, &opts, &mut out)).await?,
            };
            if !outputs.any() {
                return Ok(code);
            }
            Ok(write_run_outputs(&out.text(), code, &outputs))
        }
        Cmd::Fuzz(args) => {
            let opts = args.try_into()?;
            interruptible(vhost_kernel_test::fuzz::fuzz(&opts, std::io::stdout())).await
        }
        Cmd::AttachFd(args) => {
            // SAFETY: attach-fd is only spawned by attach_by_non_owner_eperm,
            // whose process passes these fds open and waits for our exit.
            let said = unsafe { vhost_kernel_test::suite::attach::attach_inherited(args.vktest_fd, args.vhost_fd) };
            println!("{said}");
            Ok(0)
        }
        Cmd::OpenProbe(_) => unreachable!("open-probe runs before the runtime starts (main)"),
        Cmd::ScanLog(args) if args.watch => {
            Ok(vhost_kernel_test::sys::kmsg::watch_log(&args.file, &mut std::io::stdout()))
        }
        Cmd::Report(args) => Ok(vhost_kernel_test::report::report(&args.into(), &mut std::io::stdout())),
        Cmd::ScanLog(args) => Ok(vhost_kernel_test::sys::kmsg::scan_log(&args.file, &mut std::io::stdout())),
        Cmd::Attach => {
            interruptible(run_tests(&suite::registry::attach_points(), &RunOpts::default(), std::io::stdout())).await
        }
        Cmd::Serve(args) => {
            vhost_kernel_test::serve::serve(&args.into()).await?;
            Ok(0)
        }
        Cmd::Bench(args) => {
            let opts = args.try_into()?;
            interruptible(vhost_kernel_test::bench::bench(&opts)).await
        }
        Cmd::Ping(args) => ping(args).await,
    }
}

fn main() -> ExitCode {
    let cli = cli::parse();
    if let Cmd::OpenProbe(args) = &cli.cmd {
        // Before any runtime: unshare(CLONE_NEWUSER) needs a single thread.
        let lines = vhost_kernel_test::suite::contract_v2::open_probe(args.how, &args.paths);
        lines.iter().for_each(|l| println!("{l}"));
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vhost-kernel-test: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match rt.block_on(real_main(cli)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vhost-kernel-test: {e:#}");
            1
        }
    };
    // Do not wait for background threads (floods, kmsg reader) to notice.
    rt.shutdown_background();
    ExitCode::from(code as u8)
}
