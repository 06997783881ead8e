//! `fault_inject_sweep`: every kernel allocation of every call of the
//! serve flow made to fail, one at a time, through the per-thread
//! `/proc/thread-self/fail-nth` of the fault-injection framework
//! (CONFIG_FAULT_INJECTION with FAILSLAB and FAIL_PAGE_ALLOC: the debug
//! kernel). The error paths of the series run only under memory pressure
//! otherwise; here each one runs once, under KASAN, lockdep and kmemleak.
//!
//! For one call C of the flow and N = 1, 2, ...: the calls before C run
//! normally; N is written to fail-nth and C made on the same thread, so
//! that the Nth slab or page allocation C makes fails; fail-nth reads 0
//! afterwards if that allocation happened (the fault was consumed). Then:
//! - C failed: with ENOMEM (an allocation failure has no other clean
//!   answer), and having consumed the fault; nothing of it may stay (no new
//!   vDPA device or interface), and C retried normally on the same objects
//!   must work: a failed call leaves the device as it was. The one
//!   exception is the contract's: an attach whose probe failed after the
//!   registration answers ENODEV and spends both files (the same vktest
//!   must answer ENODEV again), and the flow must attach on new files; an
//!   attach whose registration itself failed answers ENOMEM and spends
//!   them too (the driver core allows one device_add per device), which
//!   the retry's ENODEV tells;
//! - C succeeded having consumed the fault: it coped with the failure, so
//!   the device must not be broken: the rest of the flow attaches and
//!   virtio-net makes its interface;
//! - C succeeded without consuming it: C makes fewer than N allocations;
//!   the sweep of C ends (C has N - 1 injection points).
//!
//! Every try ends with a full cycle: the attach (a vDPA device with one
//! interface), the close of /dev/vktest (device and interface gone), the
//! close of the rest, and nothing left compared with before the point
//! (interfaces, vDPA devices, fds). A problem is recorded with its call
//! and N and the sweep goes on (the first few per call are quoted);
//! something left behind ends the point, later tries could not be judged.
//! What the kernel logs (KASAN, lockdep, WARN) during a try is recorded as
//! that try's problem, and quoted in full by the runner's per-point log
//! window; leaks are the leak check's after the point.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::net::Rtnl;
use crate::report::ktap::Outcome;
use crate::serve::rig::Eventfds;
use crate::sys::ioctl::{self, IfReq, VhostVringFile, VIRTIO_NET_HDR_MRG_RXBUF_LEN};
use crate::sys::kmsg::{is_splat, record_text, KMSG_PATH};
use crate::sys::tap::{TAP_OFFLOADS, TAP_TEMPLATE};
use crate::sys::vhost::{RFC_FEATURES, RX_QUEUE, TX_QUEUE, VHOST_NET_KERNEL_PATH};
use crate::sys::virtio::{vdpa_devices, VDPA_DEVICES};
use crate::sys::vktest::VKTEST_PATH;

use super::attach::vdpa_net_interface;
use super::races::Snapshot;

/// The per-thread fault counter: written N, the Nth allocation of this
/// thread fails; reads what is left of N (0 once it failed).
pub const FAIL_NTH: &str = "/proc/thread-self/fail-nth";

/// The debugfs knobs the sweep sets for its run, and their values: by
/// default failslab and fail_page_alloc ignore allocations that may sleep
/// (GFP_KERNEL: nearly all of the flow's), fail_page_alloc ignores order-0
/// pages (ring and slab pages), and every injected fault is logged with a
/// stack trace, which would bury the kernel log the runner judges.
const KNOBS: &[(&str, &str)] = &[
    ("/sys/kernel/debug/failslab/ignore-gfp-wait", "N"),
    ("/sys/kernel/debug/failslab/verbose", "0"),
    ("/sys/kernel/debug/fail_page_alloc/ignore-gfp-wait", "N"),
    ("/sys/kernel/debug/fail_page_alloc/verbose", "0"),
    ("/sys/kernel/debug/fail_page_alloc/min-order", "0"),
];

/// Every N from 1 to this is tried; after it, every [`STRIDE`]th, then the
/// gap before the first N the call did not reach is bisected, so the count
/// of injection points is exact while a call with hundreds of them (the
/// attach: virtio-net's probe) costs tens of tries, not hundreds.
pub const DENSE: u32 = 150;
pub const STRIDE: u32 = 8;

/// No call of the flow has this many injection points: a sweep reaching it
/// means fail-nth is not being consumed as it should.
const MAX_N: u32 = 20_000;

/// Why the sweep cannot run here, if so.
pub fn unavailable() -> Option<String> {
    if !Path::new(FAIL_NTH).exists() {
        return Some(format!(
            "{FAIL_NTH} missing: needs CONFIG_FAULT_INJECTION, CONFIG_FAILSLAB, CONFIG_FAIL_PAGE_ALLOC and \
             CONFIG_FAULT_INJECTION_DEBUG_FS (the debug kernel: scripts/vmtest --debug)"
        ));
    }
    KNOBS.iter().find(|(p, _)| !Path::new(p).exists()).map(|(p, _)| {
        format!(
            "{p} missing: needs CONFIG_FAILSLAB, CONFIG_FAIL_PAGE_ALLOC, CONFIG_FAULT_INJECTION_DEBUG_FS and debugfs"
        )
    })
}

/// The knobs as the sweep wants them, the old values restored on
/// [`Knobs::restore`] (or, failing that, on drop).
struct Knobs {
    saved: Vec<(&'static str, String)>,
}

impl Knobs {
    fn set() -> Result<Self> {
        let mut k = Knobs { saved: Vec::new() };
        for (path, want) in KNOBS {
            let old = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
            std::fs::write(path, want).with_context(|| format!("write {want} to {path}"))?;
            k.saved.push((path, old.trim().to_string()));
        }
        Ok(k)
    }

    fn restore(&mut self) -> Result<()> {
        let mut failed = Vec::new();
        for (path, old) in self.saved.drain(..).rev() {
            if let Err(e) = std::fs::write(path, &old) {
                failed.push(format!("{path} = {old}: {e}"));
            }
        }
        anyhow::ensure!(failed.is_empty(), "could not restore {}", failed.join("; "));
        Ok(())
    }
}

impl Drop for Knobs {
    fn drop(&mut self) {
        // Reached only when the sweep ended with an error before restore().
        let _ = self.restore();
    }
}

/// One call of the serve flow, in the flow's order (`ALL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    OpenVhost,
    OpenVktest,
    SetOwner,
    VhostKick(u32),
    VktestKick(u32),
    VhostCall(u32),
    VktestCall(u32),
    SetFeatures,
    OpenTun,
    TunSetIff,
    TunSetOffload,
    TunSetVnetHdrSz,
    SetBackend(u32),
    Attach,
    CloseVktest,
}

/// The serve flow (src/serve/rig.rs, docs/kernel-interface.md), one call
/// at a time, then the close of the attached /dev/vktest.
pub const ALL: &[Call] = &[
    Call::OpenVhost,
    Call::OpenVktest,
    Call::SetOwner,
    Call::VhostKick(RX_QUEUE),
    Call::VktestKick(RX_QUEUE),
    Call::VhostCall(RX_QUEUE),
    Call::VktestCall(RX_QUEUE),
    Call::VhostKick(TX_QUEUE),
    Call::VktestKick(TX_QUEUE),
    Call::VhostCall(TX_QUEUE),
    Call::VktestCall(TX_QUEUE),
    Call::SetFeatures,
    Call::OpenTun,
    Call::TunSetIff,
    Call::TunSetOffload,
    Call::TunSetVnetHdrSz,
    Call::SetBackend(RX_QUEUE),
    Call::SetBackend(TX_QUEUE),
    Call::Attach,
    Call::CloseVktest,
];

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::OpenVhost => write!(f, "open {VHOST_NET_KERNEL_PATH}"),
            Call::OpenVktest => write!(f, "open {VKTEST_PATH}"),
            Call::SetOwner => f.write_str("VHOST_SET_OWNER"),
            Call::VhostKick(q) => write!(f, "vhost VHOST_SET_VRING_KICK {q}"),
            Call::VktestKick(q) => write!(f, "vktest VHOST_SET_VRING_KICK {q}"),
            Call::VhostCall(q) => write!(f, "vhost VHOST_SET_VRING_CALL {q}"),
            Call::VktestCall(q) => write!(f, "vktest VHOST_SET_VRING_CALL {q}"),
            Call::SetFeatures => f.write_str("VHOST_SET_FEATURES"),
            Call::OpenTun => f.write_str("open /dev/net/tun"),
            Call::TunSetIff => f.write_str("TUNSETIFF"),
            Call::TunSetOffload => f.write_str("TUNSETOFFLOAD"),
            Call::TunSetVnetHdrSz => f.write_str("TUNSETVNETHDRSZ"),
            Call::SetBackend(q) => write!(f, "VHOST_NET_SET_BACKEND {q}"),
            Call::Attach => f.write_str("VKTEST_ATTACH_VHOST"),
            Call::CloseVktest => write!(f, "close of the attached {VKTEST_PATH}"),
        }
    }
}

/// The only errno a call may fail with when an allocation in it failed.
pub const CLEAN_ERRNO: Errno = Errno::ENOMEM;

/// VKTEST_ATTACH_VHOST's answer when a probe failed after the vDPA device
/// was registered (docs/kernel-interface.md): the device is taken down
/// again and both files are spent, the attach is retried on new ones.
pub const PROBE_FAILED_ERRNO: Errno = Errno::ENODEV;

/// Other errnos that code the series does not change gives for a failed
/// allocation (6.12): tun's TUNSETIFF passes on what register_netdevice and
/// its notifiers make of one (EINVAL, ENOBUFS), and vhost-net's
/// VHOST_SET_FEATURES answers a failed IOTLB allocation with EFAULT
/// (vhost_net_set_features). The sweep reports them as facts.
pub fn upstream_errnos(call: Call) -> &'static [Errno] {
    match call {
        Call::TunSetIff => &[Errno::EINVAL, Errno::ENOBUFS],
        Call::SetFeatures => &[Errno::EFAULT],
        _ => &[],
    }
}

/// The flow's fds, and the arguments of its calls prepared in advance: a
/// call under fault injection must make no other system call between the
/// write to fail-nth and its own (a heap allocation may, through brk or
/// mmap, and would take the injected fault).
struct Flow {
    efds: Eventfds,
    vhost: Option<OwnedFd>,
    vktest: Option<OwnedFd>,
    tun: Option<OwnedFd>,
    ifreq: IfReq,
}

fn borrow(fd: &Option<OwnedFd>) -> Result<BorrowedFd<'_>, Errno> {
    fd.as_ref().map(|f| f.as_fd()).ok_or(Errno::EBADF)
}

fn open_node(path: &CStr, flags: OFlag) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(path, flags | OFlag::O_CLOEXEC, Mode::empty())
}

impl Flow {
    fn new() -> Result<Self> {
        let mut ifreq = IfReq::default();
        ifreq.name[..TAP_TEMPLATE.len()].copy_from_slice(TAP_TEMPLATE.as_bytes());
        ifreq.flags = ioctl::IFF_TAP | ioctl::IFF_NO_PI | ioctl::IFF_VNET_HDR;
        Ok(Flow { efds: Eventfds::new()?, vhost: None, vktest: None, tun: None, ifreq })
    }

    /// Make `call`: system calls only, no allocation of ours.
    fn call(&mut self, call: Call) -> Result<(), Errno> {
        let q = |q: u32| q as usize;
        match call {
            Call::OpenVhost => self.vhost = Some(open_node(c"/dev/vhost-net-kernel", OFlag::O_RDONLY)?),
            Call::OpenVktest => self.vktest = Some(open_node(c"/dev/vktest", OFlag::O_RDONLY)?),
            Call::OpenTun => self.tun = Some(open_node(c"/dev/net/tun", OFlag::O_RDWR)?),
            // SAFETY: VHOST_SET_OWNER takes no argument.
            Call::SetOwner => unsafe { ioctl::ioctl_none(borrow(&self.vhost)?, ioctl::VHOST_SET_OWNER) }?,
            Call::VhostKick(i) => self.vring_file(true, ioctl::VHOST_SET_VRING_KICK, i, &self.efds.kick[q(i)])?,
            Call::VhostCall(i) => self.vring_file(true, ioctl::VHOST_SET_VRING_CALL, i, &self.efds.call[q(i)])?,
            Call::VktestKick(i) => self.vring_file(false, ioctl::VHOST_SET_VRING_KICK, i, &self.efds.kick[q(i)])?,
            Call::VktestCall(i) => self.vring_file(false, ioctl::VHOST_SET_VRING_CALL, i, &self.efds.call[q(i)])?,
            Call::SetFeatures => {
                let features: u64 = RFC_FEATURES;
                // SAFETY: VHOST_SET_FEATURES reads one u64.
                unsafe { ioctl::ioctl_with_ref(borrow(&self.vhost)?, ioctl::VHOST_SET_FEATURES, &features) }?
            }
            // SAFETY: TUNSETIFF reads and writes back one struct ifreq,
            // which IfReq is in size and layout.
            Call::TunSetIff => unsafe { ioctl::ioctl_with_mut(borrow(&self.tun)?, ioctl::TUNSETIFF, &mut self.ifreq) }?,
            Call::TunSetOffload => {
                let flags = libc::c_ulong::from(TAP_OFFLOADS);
                // SAFETY: TUNSETOFFLOAD takes the flags by value.
                unsafe { ioctl::ioctl_with_val(borrow(&self.tun)?, ioctl::TUNSETOFFLOAD, flags) }?
            }
            Call::TunSetVnetHdrSz => {
                let size: libc::c_int = VIRTIO_NET_HDR_MRG_RXBUF_LEN;
                // SAFETY: TUNSETVNETHDRSZ reads one int.
                unsafe { ioctl::ioctl_with_ref(borrow(&self.tun)?, ioctl::TUNSETVNETHDRSZ, &size) }?
            }
            Call::SetBackend(i) => {
                let arg = VhostVringFile { index: i, fd: std::os::fd::AsRawFd::as_raw_fd(&borrow(&self.tun)?) };
                // SAFETY: VHOST_NET_SET_BACKEND reads one struct vhost_vring_file.
                unsafe { ioctl::ioctl_with_ref(borrow(&self.vhost)?, ioctl::VHOST_NET_SET_BACKEND, &arg) }?
            }
            Call::Attach => {
                let vhost = std::os::fd::AsRawFd::as_raw_fd(&borrow(&self.vhost)?);
                // SAFETY: VKTEST_ATTACH_VHOST takes the fd number by value.
                unsafe {
                    ioctl::ioctl_with_val(borrow(&self.vktest)?, ioctl::VKTEST_ATTACH_VHOST, vhost as libc::c_ulong)
                }?
            }
            Call::CloseVktest => nix::unistd::close(self.vktest.take().ok_or(Errno::EBADF)?)?,
        }
        Ok(())
    }

    /// SET_VRING_KICK/CALL (`req`) of queue `index` on vhost (`on_vhost`) or vktest.
    fn vring_file(&self, on_vhost: bool, req: u32, index: u32, efd: &impl AsFd) -> Result<(), Errno> {
        let dev = borrow(if on_vhost { &self.vhost } else { &self.vktest })?;
        let arg = VhostVringFile { index, fd: std::os::fd::AsRawFd::as_raw_fd(&efd.as_fd()) };
        // SAFETY: SET_VRING_KICK/CALL of both devices read one struct vhost_vring_file.
        unsafe { ioctl::ioctl_with_ref(dev, req, &arg) }
    }

    /// `call` made normally; an error names it.
    fn run(&mut self, call: Call) -> Result<()> {
        self.call(call).map_err(anyhow::Error::new).with_context(|| format!("{call}"))
    }
}

/// What one call under fail-nth N did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    /// The call's result.
    pub result: Result<(), Errno>,
    /// Whether the Nth allocation happened (and failed).
    pub consumed: bool,
}

/// Make `call` on `flow` with its `n`th allocation failing: the write to
/// fail-nth, the call and the read back happen on this thread with no
/// other system call of ours in between.
fn inject(flow: &mut Flow, call: Call, n: u32) -> Result<Injected> {
    let nth = nix::fcntl::open(c"/proc/thread-self/fail-nth", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .with_context(|| format!("open {FAIL_NTH}"))?;
    let mut digits = [0u8; 12];
    let text = {
        use std::io::Write;
        let mut w = &mut digits[..];
        write!(w, "{n}").context("format N")?;
        let left = w.len();
        &digits[..digits.len() - left]
    };
    let written = nix::sys::uio::pwrite(&nth, text, 0).with_context(|| format!("write {n} to {FAIL_NTH}"))?;
    anyhow::ensure!(written == text.len(), "short write to {FAIL_NTH}");
    let result = flow.call(call);
    let mut back = [0u8; 16];
    let got = nix::sys::uio::pread(&nth, &mut back, 0);
    // Disarm whatever is left before anything else can allocate.
    let reset = nix::sys::uio::pwrite(&nth, b"0", 0);
    let got = got.with_context(|| format!("read {FAIL_NTH} back after {call}"))?;
    reset.with_context(|| format!("write 0 to {FAIL_NTH}"))?;
    let left = std::str::from_utf8(&back[..got]).ok().and_then(|s| s.trim().parse::<u32>().ok());
    let left = left.with_context(|| format!("{FAIL_NTH} read back {:?}", String::from_utf8_lossy(&back[..got])))?;
    Ok(Injected { result, consumed: left == 0 })
}

/// The kernel log from where the sweep started, read after each try to
/// name the try during which the kernel reported a problem (the runner's
/// window quotes the report itself, without knowing the try).
struct KmsgTail {
    fd: OwnedFd,
}

impl KmsgTail {
    fn open() -> Result<Self> {
        let fd = nix::fcntl::open(c"/dev/kmsg", OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, Mode::empty())
            .with_context(|| format!("open {KMSG_PATH}"))?;
        nix::unistd::lseek(&fd, 0, nix::unistd::Whence::SeekEnd).with_context(|| format!("seek {KMSG_PATH}"))?;
        Ok(KmsgTail { fd })
    }

    /// The report lines logged since the last call.
    fn reports(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) | Err(Errno::EAGAIN) => return out,
                Ok(n) => {
                    let text = record_text(&String::from_utf8_lossy(&buf[..n])).to_string();
                    if is_splat(&text) {
                        out.push(text);
                    }
                }
                // Overwritten before read: the runner's window says so.
                Err(Errno::EPIPE) | Err(Errno::EINTR) => {}
                Err(e) => {
                    out.push(format!("(cannot read {KMSG_PATH}: {e})"));
                    return out;
                }
            }
        }
    }
}

/// How the sweep of one call went.
#[derive(Debug, Default)]
pub struct CallSweep {
    /// Injection points: the largest N the call consumed.
    pub points: u32,
    /// N tried.
    pub tries: u32,
    /// The problems found: N and what (the same words for the same problem).
    pub problems: Vec<(u32, String)>,
}

/// The N after `n` while sweeping (dense, then strided).
pub fn next_n(n: u32) -> u32 {
    if n < DENSE {
        n + 1
    } else {
        n + STRIDE
    }
}

/// The sweep itself, with what it compares against.
struct Sweep<'a> {
    rtnl: Rtnl,
    kmsg: Option<KmsgTail>,
    before: Snapshot,
    /// Upstream errnos seen ([`upstream_errnos`]).
    facts: Vec<(Call, Errno)>,
    diag: &'a mut dyn FnMut(String),
}

/// A try's verdict on the kernel (Err: the try could not run or left
/// something behind, which ends the point).
type TryResult = Result<Option<String>>;

impl Sweep<'_> {
    /// One full cycle with `call` under fail-nth `n`; Ok(consumed, problem).
    async fn try_once(&mut self, call: Call, n: u32) -> Result<(bool, Option<String>)> {
        let mut flow = Flow::new()?;
        let at = format!("{call}, N={n}");
        let mut consumed = false;
        let mut problem = None;
        for c in ALL {
            if *c != call {
                // A call made normally that fails ends the try (the
                // ones after it need it); a problem the checks find does
                // not, so that the try still ends with the close.
                if let Err(e) = flow.run(*c) {
                    problem.get_or_insert(format!("{at}: then {e:#}"));
                    break;
                }
                if *c == Call::Attach {
                    if let Some(p) = self.check_attached(&at)? {
                        problem.get_or_insert(p);
                    }
                }
                continue;
            }
            let vdpa_before = vdpa_devices()?;
            let got = inject(&mut flow, call, n)?;
            consumed = got.consumed;
            match got.result {
                Err(errno) => {
                    if let Some(p) = self.judge_failure(&mut flow, call, &at, errno, got.consumed, &vdpa_before)? {
                        problem.get_or_insert(p);
                        break;
                    }
                    // Retried normally: the attach must have done its work.
                    if call == Call::Attach {
                        if let Some(p) = self.check_attached(&format!("{at}, retried"))? {
                            problem.get_or_insert(p);
                        }
                    }
                }
                Ok(()) if call == Call::Attach => {
                    if let Some(p) = self.check_attached(&at)? {
                        problem.get_or_insert(format!("{p} (the call succeeded, fault consumed: {consumed})"));
                    }
                }
                Ok(()) => {}
            }
        }
        // /dev/vktest is closed (its device unregistered) before the rest.
        let kept: Vec<String> = vdpa_devices()?.difference(&self.before.vdpa).cloned().collect();
        if !kept.is_empty() && problem.is_none() {
            problem = Some(format!("{at}: vDPA device(s) {kept:?} still registered after closing {VKTEST_PATH}"));
        }
        drop(flow);
        let after = Snapshot::take(&self.rtnl).await?;
        let left = self.before.leftovers(&after);
        if !left.is_empty() {
            bail!("{at}: left behind after closing everything: {}", left.join(", "));
        }
        let reports = self.kmsg.as_ref().map(KmsgTail::reports).unwrap_or_default();
        if let Some(first) = reports.first() {
            let p = format!("{at}: the kernel reported {first:?} (quoted in full after the point)");
            problem = Some(problem.map_or(p.clone(), |q| format!("{q}; {p}")));
        }
        Ok((consumed, problem))
    }

    /// A call that failed under fail-nth: clean errno, the fault consumed,
    /// nothing of it left, and retried normally it works.
    fn judge_failure(
        &mut self,
        flow: &mut Flow,
        call: Call,
        at: &str,
        errno: Errno,
        consumed: bool,
        vdpa_before: &std::collections::BTreeSet<String>,
    ) -> TryResult {
        if call == Call::CloseVktest {
            return Ok(Some(format!("{at}: close failed with {errno}")));
        }
        if !consumed {
            return Ok(Some(format!("{at}: failed with {errno} without reaching its Nth allocation")));
        }
        if call == Call::Attach && errno == PROBE_FAILED_ERRNO {
            return self.judge_probe_failure(flow, at, vdpa_before);
        }
        if upstream_errnos(call).contains(&errno) {
            self.facts.push((call, errno));
        } else if errno != CLEAN_ERRNO {
            return Ok(Some(format!("{at}: failed with {errno}, expected {CLEAN_ERRNO} for a failed allocation")));
        }
        let vdpa_after = vdpa_devices()?;
        let new: Vec<&String> = vdpa_after.difference(vdpa_before).collect();
        if !new.is_empty() {
            return Ok(Some(format!("{at}: failed with {errno} but left vDPA device(s) {new:?} registered")));
        }
        match flow.call(call) {
            Ok(()) => Ok(None),
            // The registration itself failed (step 6 of the attach in
            // docs/kernel-interface.md): the files are spent, the flow
            // must attach on new ones.
            Err(e) if call == Call::Attach && e == PROBE_FAILED_ERRNO => {
                self.facts.push((Call::Attach, CLEAN_ERRNO));
                self.attach_on_new_files(flow, at, errno)
            }
            Err(e) => Ok(Some(format!("{at}: failed with {errno}; retried without the fault: {call}: {e}"))),
        }
    }

    /// After an attach that spent its files: the whole flow on new files
    /// must attach.
    fn attach_on_new_files(&mut self, flow: &mut Flow, at: &str, errno: Errno) -> TryResult {
        *flow = Flow::new()?;
        for c in ALL.iter().take_while(|c| **c != Call::Attach).chain([&Call::Attach]) {
            if let Err(e) = flow.run(*c) {
                return Ok(Some(format!("{at}: failed with {errno}; on new files: {e:#}")));
            }
        }
        Ok(None)
    }

    /// An attach that failed in a probe after registering: no device left,
    /// the same vktest refuses another attach (spent), and on new files the
    /// flow attaches again.
    fn judge_probe_failure(
        &mut self,
        flow: &mut Flow,
        at: &str,
        vdpa_before: &std::collections::BTreeSet<String>,
    ) -> TryResult {
        self.facts.push((Call::Attach, PROBE_FAILED_ERRNO));
        let left: Vec<String> = vdpa_devices()?.difference(vdpa_before).cloned().collect();
        if !left.is_empty() {
            return Ok(Some(format!("{at}: failed with {PROBE_FAILED_ERRNO} but left vDPA device(s) {left:?}")));
        }
        match flow.call(Call::Attach) {
            Err(e) if e == PROBE_FAILED_ERRNO => {}
            other => {
                return Ok(Some(format!(
                    "{at}: failed with {PROBE_FAILED_ERRNO}; attached again on the same files: {other:?}, expected \
                     {PROBE_FAILED_ERRNO} (spent)"
                )))
            }
        }
        self.attach_on_new_files(flow, at, PROBE_FAILED_ERRNO)
    }

    /// After a successful attach: exactly one new vDPA device, with one
    /// virtio-net interface.
    fn check_attached(&mut self, at: &str) -> TryResult {
        let new: Vec<String> = vdpa_devices()?.difference(&self.before.vdpa).cloned().collect();
        Ok(match new.as_slice() {
            [dev] => match vdpa_net_interface(dev) {
                Ok(_) => None,
                Err(e) => Some(format!("{at}: VKTEST_ATTACH_VHOST returned 0 but {e:#}")),
            },
            [] => Some(format!("{at}: VKTEST_ATTACH_VHOST returned 0 but no device appeared in {VDPA_DEVICES}")),
            many => Some(format!("{at}: VKTEST_ATTACH_VHOST returned 0 and {} vDPA devices appeared", many.len())),
        })
    }

    /// N = 1, 2, ... for `call` until it no longer reaches its Nth
    /// allocation ([`next_n`]), then the gap bisected.
    async fn sweep_call(&mut self, call: Call) -> Result<CallSweep> {
        let mut s = CallSweep::default();
        let mut n = 1;
        let mut unreached = loop {
            anyhow::ensure!(n < MAX_N, "{call}: still consuming faults at N={n}");
            let (consumed, problem) = self.try_once(call, n).await?;
            s.tries += 1;
            s.problems.extend(problem.map(|p| (n, without_try(call, n, &p))));
            if !consumed {
                break n;
            }
            s.points = n;
            n = next_n(n);
        };
        // Stepping jumped: the last injection point is in (points, unreached).
        while unreached - s.points > 1 {
            let mid = s.points + (unreached - s.points) / 2;
            let (consumed, problem) = self.try_once(call, mid).await?;
            s.tries += 1;
            s.problems.extend(problem.map(|p| (mid, without_try(call, mid, &p))));
            if consumed {
                s.points = mid;
            } else {
                unreached = mid;
            }
        }
        Ok(s)
    }
}

/// A problem's words without its try (`CALL, N=n`), so that the same
/// problem at several N reads the same.
fn without_try(call: Call, n: u32, problem: &str) -> String {
    problem.strip_prefix(&format!("{call}, N={n}")).unwrap_or(problem).to_string()
}

/// One line per distinct problem of a call: the N it happened at (the
/// first [`QUOTED`] of them, then how many), then what.
pub fn grouped_problems(call: Call, problems: &[(u32, String)]) -> Vec<String> {
    let mut groups: Vec<(&str, Vec<u32>)> = Vec::new();
    for (n, what) in problems {
        match groups.iter_mut().find(|(w, _)| *w == what.as_str()) {
            Some((_, ns)) => ns.push(*n),
            None => groups.push((what, vec![*n])),
        }
    }
    groups
        .into_iter()
        .map(|(what, ns)| {
            let mut list: Vec<String> = ns.iter().take(QUOTED).map(u32::to_string).collect();
            if ns.len() > QUOTED {
                list.push(format!("... ({} N in all)", ns.len()));
            }
            format!("{call}, N={}{what}", list.join(","))
        })
        .collect()
}

/// N quoted per problem (the others are counted).
const QUOTED: usize = 12;

/// The `fault_inject_sweep` test point.
pub async fn fault_inject_sweep(diag: &mut dyn FnMut(String)) -> Result<Outcome> {
    if let Some(why) = unavailable() {
        return Ok(Outcome::Skip(why));
    }
    let rtnl = Rtnl::new(None)?;
    let kmsg = KmsgTail::open().map_err(|e| diag(format!("tries not matched with kernel reports: {e:#}"))).ok();
    // The netlink socket and the kmsg fd are open before the snapshot and
    // for every later one.
    let before = Snapshot::take(&rtnl).await?;
    let mut knobs = Knobs::set()?;
    let started = Instant::now();
    let mut sweep = Sweep { rtnl, kmsg, before, facts: Vec::new(), diag };
    let mut total = 0;
    let mut tries = 0;
    let mut problems = Vec::new();
    let mut result = Ok(());
    for call in ALL {
        let began = Instant::now();
        match sweep.sweep_call(*call).await {
            Ok(s) => {
                total += s.points;
                tries += s.tries;
                (sweep.diag)(format!(
                    "{call}: {} injection point(s), {} tries in {:.1} s",
                    s.points,
                    s.tries,
                    began.elapsed().as_secs_f64()
                ));
                problems.extend(grouped_problems(*call, &s.problems));
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let restored = knobs.restore();
    result?;
    restored?;
    let diag = sweep.diag;
    let probe_failures = sweep.facts.iter().filter(|f| **f == (Call::Attach, PROBE_FAILED_ERRNO)).count();
    let spent_by_enomem = sweep.facts.iter().filter(|f| **f == (Call::Attach, CLEAN_ERRNO)).count();
    if spent_by_enomem > 0 {
        diag(format!(
            "{}: {CLEAN_ERRNO} {spent_by_enomem} time(s) in the registration itself: the files spent (ENODEV on \
             retry), the attach worked on new files",
            Call::Attach
        ));
    }
    if probe_failures > 0 {
        diag(format!(
            "{}: {PROBE_FAILED_ERRNO} {probe_failures} time(s): a probe failed after the registration, the device \
             went again, the attach worked on new files",
            Call::Attach
        ));
    }
    for call in ALL {
        for errno in upstream_errnos(*call) {
            let times = sweep.facts.iter().filter(|f| f == &&(*call, *errno)).count();
            if times > 0 {
                diag(format!(
                    "{call}: {errno} for a failed allocation {times} time(s) (upstream 6.12 code, not the series)"
                ));
            }
        }
    }
    diag(format!(
        "{total} injection points in {} calls, {tries} tries in {:.1} s (N = 1..{DENSE}, then every {STRIDE}th, then \
         the gap bisected)",
        ALL.len(),
        started.elapsed().as_secs_f64()
    ));
    if problems.is_empty() {
        return Ok(Outcome::Pass);
    }
    diag("injected allocation failures mishandled:".to_string());
    problems.into_iter().for_each(diag);
    Ok(Outcome::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_is_dense_then_strided() {
        assert_eq!(next_n(1), 2);
        assert_eq!(next_n(DENSE - 1), DENSE);
        assert_eq!(next_n(DENSE), DENSE + STRIDE);
        assert_eq!(ALL.first(), Some(&Call::OpenVhost));
        assert_eq!(ALL[ALL.len() - 2..], [Call::Attach, Call::CloseVktest]);
        assert_eq!(Call::VktestCall(1).to_string(), "vktest VHOST_SET_VRING_CALL 1");
    }

    #[test]
    fn problems_are_grouped_by_their_words() {
        let c = Call::Attach;
        let p = |n: u32, what: &str| (n, without_try(c, n, &format!("{c}, N={n}{what}")));
        let problems: Vec<_> = (1..=15)
            .map(|n| p(n, ": failed with ENOMEM; retried: EBUSY"))
            .chain([p(4, ", retried: no interface")])
            .collect();
        let lines = grouped_problems(c, &problems);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[0],
            "VKTEST_ATTACH_VHOST, N=1,2,3,4,5,6,7,8,9,10,11,12,... (15 N in all): failed with ENOMEM; retried: EBUSY"
        );
        assert_eq!(lines[1], "VKTEST_ATTACH_VHOST, N=4, retried: no interface");
    }
}
