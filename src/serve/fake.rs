//! `--fake-device`: a stand-in for vhost-net-kernel + vktest made of two
//! TAPs bridged in user space. It tests the harness itself (serve protocol,
//! namespaces, addresses, traffic, floods, signals, cleanup) on any kernel;
//! it says nothing about the kernel feature.
//!
//! Like the real pair, both interfaces vanish when the serving process
//! exits, and "closing vktest" (SIGUSR1) removes only the g2h interface.
//! The bridge stands for vhost-net with its h2g TAP: what stands for the
//! /dev/vhost-net-kernel fd is a duplicate of the h2g TAP's fd, held by the
//! pair while the bridge thread, like vktest holding the vhost device,
//! keeps its own. "Closing vhost" (SIGUSR2) closes that duplicate: traffic
//! goes on, as on the real pair.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::sys::tap::{Tap, TAP_TEMPLATE};

/// Name template of the fake guest-side interface.
pub const FAKE_G2H_TEMPLATE: &str = "vkfake%d";

const CMD_CLOSE_G2H: u64 = 1;
const CMD_STOP: u64 = 2;

pub struct FakePair {
    pub h2g: String,
    pub g2h: String,
    /// The stand-in for the /dev/vhost-net-kernel fd (a dup of h2g's fd).
    vhost: Option<OwnedFd>,
    cmd: Arc<EventFd>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl FakePair {
    pub fn start() -> Result<Self> {
        let h2g = Tap::create(TAP_TEMPLATE, false)?;
        let g2h = Tap::create(FAKE_G2H_TEMPLATE, false)?;
        let vhost = h2g.as_fd().try_clone_to_owned().with_context(|| format!("dup the fd of TAP {}", h2g.name()))?;
        let cmd = Arc::new(EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).context("eventfd")?);
        let (h2g_name, g2h_name) = (h2g.name().to_string(), g2h.name().to_string());
        let c = cmd.clone();
        let thread = std::thread::Builder::new()
            .name("fake-bridge".into())
            .spawn(move || bridge(h2g, Some(g2h), &c))
            .context("spawn fake bridge thread")?;
        Ok(FakePair { h2g: h2g_name, g2h: g2h_name, vhost: Some(vhost), cmd, thread: Some(thread) })
    }

    /// What closing /dev/vhost-net-kernel does to the real pair: the fd
    /// goes, the device stays (vktest holds it). Closes the duplicate of
    /// h2g's fd and says what it closed; None if it was closed already.
    pub fn close_vhost(&mut self) -> Option<String> {
        let fd = self.vhost.take()?;
        let n = fd.as_raw_fd();
        drop(fd);
        Some(format!(
            "closed fd {n}, the fake's /dev/vhost-net-kernel (a dup of TAP {}'s fd); the bridge keeps its own",
            self.h2g
        ))
    }

    /// What closing /dev/vktest does to the real pair: g2h goes away.
    pub fn close_g2h(&self) -> Result<()> {
        self.cmd.write(CMD_CLOSE_G2H).context("signal fake bridge")?;
        Ok(())
    }

    /// Remove both interfaces.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(t) = self.thread.take() else { return Ok(()) };
        self.cmd.write(CMD_STOP).context("signal fake bridge")?;
        t.join().map_err(|_| anyhow!("fake bridge thread panicked"))?
    }
}

impl Drop for FakePair {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Copy frames between the TAPs until told to stop; drop g2h when told to.
fn bridge(h2g: Tap, mut g2h: Option<Tap>, cmd: &EventFd) -> Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (cmd_ready, h_ready, g_ready) = {
            let mut fds =
                vec![PollFd::new(cmd.as_fd(), PollFlags::POLLIN), PollFd::new(h2g.as_fd(), PollFlags::POLLIN)];
            if let Some(g) = &g2h {
                fds.push(PollFd::new(g.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).context("poll fake bridge fds"),
            }
            let ready = |i: usize| fds.get(i).and_then(|f| f.revents()).is_some_and(|r| r.contains(PollFlags::POLLIN));
            (ready(0), ready(1), ready(2))
        };
        if cmd_ready {
            let v = cmd.read().context("read fake bridge command")?;
            if v & CMD_STOP != 0 {
                return Ok(());
            }
            if v & CMD_CLOSE_G2H != 0 {
                g2h = None;
            }
        }
        if h_ready {
            let n = h2g.read_frame(&mut buf).context("read h2g tap")?;
            if let Some(g) = &g2h {
                let _ = g.write_frame(&buf[..n]);
            }
        }
        if g_ready {
            if let Some(g) = &g2h {
                let n = g.read_frame(&mut buf).context("read g2h tap")?;
                let _ = h2g.write_frame(&buf[..n]);
            }
        }
    }
}
