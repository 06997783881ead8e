//! vhost-kernel-test: harness for kernel-buffer vhost (/dev/vhost-net-kernel)
//! and the vktest vDPA loopback driver (/dev/vktest).
//!
//! Design notes:
//! - Modelled on rust-vmm's `vhost` crate kernel backend: one type per kernel
//!   object ([`vhost::VhostNetKernel`], [`vktest::Vktest`], [`tap::Tap`]); every
//!   ioctl number is computed once in [`ioctl`] with `_IOC` arithmetic and
//!   unit-tested against the numeric uapi values.
//! - Networking is driven with rtnetlink (tokio, current-thread runtime); named
//!   namespaces are implemented here ([`netns`]) exactly like `ip netns`
//!   (bind mount of a thread's ns/net onto /run/netns/NAME), so they work in a
//!   bare initramfs and interoperate with iproute2.
//! - Traffic is ICMPv6 echo over raw sockets ([`icmp`]) opened from a thread
//!   that has joined the namespace; payloads are verified byte for byte.
//! - Nothing sleeps to synchronise: waits are on netlink events, fds, child
//!   exit, or a /dev/kmsg marker, each with a timeout and a message.
//! - Output of `run`/`attach` is KTAP v1 ([`ktap`]); kernel health comes from a
//!   /dev/kmsg reader ([`kmsg`]) synchronised by marker records.
//! - `serve` runs as a child of `run` (spawned from /proc/self/exe) so that
//!   "the serving process exits" is a real process exit.
//! - `--fake-device` ([`fake`]) replaces vhost + vktest by two TAPs bridged in
//!   user space, to test the harness itself on kernels without the feature.
//! - `run --repeat N` nests each pass as a KTAP v1 subtest and stops at the
//!   first kernel report; [`races`] holds the attach/close loop and its
//!   leftover snapshot (interfaces, vdpa devices, fds); [`fuzz`] drives random
//!   ioctl sequences against a table of allowed errnos, with its own
//!   xorshift generator (seed printed for replay).
//! - Crates: nix/libc (syscalls), rtnetlink (netlink, tokio), tokio
//!   (current-thread runtime, signals, child processes), clap (CLI), anyhow
//!   (errors with context). No netns crate, no DNS, no /etc: statically
//!   linkable for a busybox initramfs.

pub mod bench;
pub mod fuzz;
pub mod net;
pub mod report;
pub mod serve;
pub mod suite;
pub mod sys;

// Transitional: the modules' old paths, while the tree is being reshaped.
pub use net::icmp;
pub use report::ktap;
pub use serve::fake;
pub use suite::{attach, races};
pub use sys::{ioctl, kmsg, netns, tap, vhost, vktest};

/// The errno at the root of an error chain, if any.
pub fn errno_of(e: &anyhow::Error) -> Option<nix::errno::Errno> {
    e.chain().find_map(|c| c.downcast_ref::<nix::errno::Errno>().copied())
}
