//! The serving child process that `run` starts for each scenario, and its
//! end (signals, exit, the interfaces it held going away).

use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

use crate::net::{LinkWatcher, Rtnl};
use crate::serve::closed_line;
use crate::serve::Interfaces;

/// The serving child process (killed if dropped while still running). Its
/// stderr is collected and reported as diagnostics of the test point.
pub struct ServeChild {
    child: Child,
    stderr: Option<tokio::task::JoinHandle<Vec<String>>>,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    pub ifs: Interfaces,
}

impl ServeChild {
    pub async fn spawn(exe: &str, vhost_hdr: bool, fake: bool, limit: Duration) -> Result<Self> {
        let mut extra = Vec::new();
        if vhost_hdr {
            extra.push("--vhost-hdr".to_string());
        }
        if fake {
            extra.push("--fake-device".to_string());
        }
        Self::spawn_with(exe, &extra, limit).await
    }

    /// `exe serve --json --timeout N` followed by `extra` arguments.
    pub async fn spawn_with(exe: &str, extra: &[String], limit: Duration) -> Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg("serve").arg("--json").arg("--timeout").arg(limit.as_secs().max(1).to_string());
        cmd.args(extra);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).process_group(0);
        let parent = nix::unistd::getpid();
        // SAFETY: the hook runs between fork and exec, where only
        // async-signal-safe calls are allowed: prctl and getppid only.
        unsafe { cmd.pre_exec(move || die_with_parent(parent)) };
        let mut child = cmd.spawn().with_context(|| format!("spawn {exe} serve"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("serve child has no stdout"))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("serve child has no stderr"))?;
        let stderr = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut out = Vec::new();
            while let Ok(Some(l)) = lines.next_line().await {
                out.push(l);
            }
            out
        });
        let mut me = ServeChild {
            child,
            stderr: Some(stderr),
            stdout: BufReader::new(stdout).lines(),
            ifs: Interfaces::default(),
        };
        let wait = limit * 2;
        let line = tokio::select! {
            r = timeout(wait, me.stdout.next_line()) => match r {
                Ok(Ok(Some(l))) => Ok(l),
                Ok(Ok(None)) => Err(anyhow!("serve child closed stdout without printing its interfaces")),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("read serve child's stdout")),
                Err(_) => Err(anyhow!("timed out after {:.0}s waiting for the serve child's interface line", wait.as_secs_f64())),
            },
            st = me.child.wait() => Err(anyhow!(
                "serve child exited ({}) before printing its interfaces",
                st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
            )),
        };
        let parsed = line.and_then(|l| Interfaces::parse_json(&l));
        match parsed {
            Ok(ifs) => {
                me.ifs = ifs;
                Ok(me)
            }
            Err(e) => {
                me.kill_and_wait(limit).await;
                let said = me.stderr_lines(limit).await;
                if said.is_empty() {
                    Err(e)
                } else {
                    Err(e.context(format!("serve child said: {}", said.join(" | "))))
                }
            }
        }
    }

    /// Everything the child wrote to stderr (call after it exited).
    pub async fn stderr_lines(&mut self, limit: Duration) -> Vec<String> {
        match self.stderr.take() {
            Some(h) => timeout(limit, h).await.ok().and_then(|r| r.ok()).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Wait for the next stdout line of the child (after its interface
    /// line) and check that it is `want`.
    pub async fn expect_line(&mut self, want: &str, limit: Duration) -> Result<()> {
        match timeout(limit, self.stdout.next_line()).await {
            Ok(Ok(Some(l))) if l == want => Ok(()),
            Ok(Ok(Some(l))) => bail!("serve child printed {l:?}, expected {want:?}"),
            Ok(Ok(None)) => bail!("serve child closed stdout while we waited for {want:?}"),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("read serve child's stdout")),
            Err(_) => {
                bail!("timed out after {:.0}s waiting for the serve child to print {want:?}", limit.as_secs_f64())
            }
        }
    }

    /// Signal the child, then wait for its `closed PATH` line.
    pub async fn close_on_signal(&mut self, sig: Signal, path: &str, limit: Duration) -> Result<()> {
        self.signal(sig)?;
        self.expect_line(&closed_line(path, true), limit).await.with_context(|| format!("after {sig}"))
    }

    /// SIGKILL and reap; the child must have died of that signal.
    pub async fn sigkill(&mut self, limit: Duration) -> Result<()> {
        use std::os::unix::process::ExitStatusExt;
        self.signal(Signal::SIGKILL)?;
        let st = timeout(limit, self.child.wait())
            .await
            .map_err(|_| anyhow!("serve child not reaped within {:.0}s of SIGKILL", limit.as_secs_f64()))?
            .context("wait for serve child")?;
        if st.signal() != Some(libc::SIGKILL) {
            bail!("serve child ended with {st}, not by SIGKILL");
        }
        Ok(())
    }

    pub fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self.child.id().ok_or_else(|| anyhow!("serve child already reaped"))?;
        kill(Pid::from_raw(pid as i32), sig).with_context(|| format!("kill({pid}, {sig})"))
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn terminate(&mut self, limit: Duration) -> Result<()> {
        self.signal(Signal::SIGTERM)?;
        let st = timeout(limit, self.child.wait())
            .await
            .map_err(|_| anyhow!("serve child did not exit within {:.0}s of SIGTERM", limit.as_secs_f64()))?
            .context("wait for serve child")?;
        if !st.success() {
            bail!("serve child exited with {st}");
        }
        Ok(())
    }

    /// Cleanup after a failure: SIGKILL (if still running) and reap.
    pub async fn kill_and_wait(&mut self, limit: Duration) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.start_kill();
            let _ = timeout(limit, self.child.wait()).await;
        }
    }
}

/// In the forked child before exec: be SIGKILLed when the parent dies, so
/// that a SIGKILLed `run` does not leave its serving child holding the
/// devices and interfaces (its own process group spares it the parent's
/// group signals). The signal comes when the thread that forked exits: the
/// runtime's thread, which lives as long as the process. If the parent
/// died before the prctl, no signal will come: fail the exec instead.
pub(crate) fn die_with_parent(parent: nix::unistd::Pid) -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integers and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if nix::unistd::getppid() != parent {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// How long dropping a still running [`ServeChild`] waits for it to die.
pub(crate) const DROP_REAP_LIMIT: Duration = Duration::from_secs(10);

impl Drop for ServeChild {
    /// A run interrupted by a signal (or failing) drops its child: SIGKILL
    /// it and wait (bounded) for it to die, so that its interfaces are gone
    /// before the namespaces are deleted and no process is left behind.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let Some(pid) = self.child.id() else { return };
        let _ = self.child.start_kill();
        let _ = wait_pid_exit(pid as i32, DROP_REAP_LIMIT);
    }
}

/// Wait until process `pid` (our child) has exited, at most `limit`, and reap it.
pub(crate) fn wait_pid_exit(pid: i32, limit: Duration) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("pidfd_open({pid})"));
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => bail!("process {pid} still alive {:.0}s after SIGKILL", limit.as_secs_f64()),
        Ok(_) => {}
        Err(e) => return Err(e).with_context(|| format!("poll pidfd of {pid}")),
    }
    // Reap it (tokio may have done so already: ECHILD is fine).
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    Ok(())
}

/// SIGTERM the child, wait for its clean exit, then for each (namespace,
/// ifindex, name) in `gone` the interface's removal (watchers are set up
/// before the signal, so no event is missed).
pub async fn terminate_and_wait_gone(
    child: &mut ServeChild,
    gone: &[(&str, u32, &str)],
    limit: Duration,
) -> Result<()> {
    end_and_wait_gone(child, gone, limit, false).await
}

/// As [`terminate_and_wait_gone`], with SIGKILL instead of SIGTERM if `kill`.
pub(crate) async fn end_and_wait_gone(
    child: &mut ServeChild,
    gone: &[(&str, u32, &str)],
    limit: Duration,
    kill: bool,
) -> Result<()> {
    let mut watchers = Vec::new();
    for (ns, idx, name) in gone {
        let w = LinkWatcher::new(Some(ns))?;
        // Already gone (e.g. removed while we were subscribing)?
        let present = Rtnl::new(Some(ns))?.links().await?.iter().any(|l| l.index == *idx);
        if present {
            watchers.push((w, *idx, *name, *ns));
        }
    }
    if kill {
        child.sigkill(limit).await?;
    } else {
        child.terminate(limit).await?;
    }
    let how = if kill { "was killed" } else { "exited" };
    for (mut w, idx, name, ns) in watchers {
        w.wait_del_link(idx, limit, &format!("{name} in namespace {ns} to go away after the serving process {how}"))
            .await?;
    }
    Ok(())
}
