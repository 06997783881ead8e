//! vhost-kernel-test: harness for kernel-buffer vhost (/dev/vhost-net-kernel)
//! and the vktest vDPA loopback driver (/dev/vktest).
//!
//! The tree, by what each part does:
//! - [`sys`]: the kernel objects and syscalls, one type per object with all
//!   of its ioctls as methods ([`sys::vhost::VhostNetKernel`],
//!   [`sys::vktest::Vktest`], [`sys::tap::Tap`]), every ioctl number once in
//!   [`sys::ioctl`] (the raw calls are `unsafe fn`, each call site says why
//!   it is sound), named namespaces ([`sys::netns`], as `ip netns` makes
//!   them), virtio/vDPA devices in sysfs ([`sys::virtio`]) and the kernel
//!   log ([`sys::kmsg`]: /dev/kmsg, the report matcher, kmemleak).
//! - [`net`]: rtnetlink (links, addresses, namespace moves, link events, on a
//!   tokio current-thread runtime) and ICMPv6 echo over raw sockets
//!   ([`net::icmp`], payloads checked byte for byte).
//! - [`report`]: KTAP v1 ([`report::ktap`]), and that KTAP read back
//!   ([`report::results`]) as JUnit XML ([`report::junit`]) and a JSON
//!   summary ([`report::json`]) for CI (`report`, `run --junit/--json`).
//! - [`serve`]: the RFC's --serve flow as a process: the one wiring
//!   ([`serve::rig`]), the interfaces it made, signals; and the
//!   `--fake-device` stand-in ([`serve::fake`]).
//! - [`suite`]: `run`: the table of test points ([`suite::registry`]), the
//!   ABI checks ([`suite::attach`]), the teardown scenarios
//!   ([`suite::scenario`]) with their traffic ([`suite::traffic`]) and
//!   serving child ([`suite::child`]), the races ([`suite::races`]), the
//!   kernel-log accounting ([`suite::kernel_log`]) and the runner.
//! - [`fuzz`]: random ioctl sequences judged by a model of every fd's state.
//! - [`bench`]: the vhost path against veth, figures and report.
//! - The binary's command line is src/cli.rs (clap `Args` per subcommand).
//!
//! Nothing sleeps to synchronise: waits are on netlink events, fds, child
//! exit, or a /dev/kmsg marker, each with a timeout and a message. Crates:
//! nix/libc (syscalls), rtnetlink (netlink), tokio (runtime, signals, child
//! processes), clap (CLI), anyhow (errors with context), serde_json (JSON),
//! quick-junit (JUnit XML).
//! No netns crate, no DNS, no /etc: statically linkable for a busybox
//! initramfs.

pub mod bench;
pub mod fuzz;
pub mod net;
pub mod report;
pub mod serve;
pub mod suite;
pub mod sys;

/// The errno at the root of an error chain, if any.
pub fn errno_of(e: &anyhow::Error) -> Option<nix::errno::Errno> {
    e.chain().find_map(|c| c.downcast_ref::<nix::errno::Errno>().copied())
}
