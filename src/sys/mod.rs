//! The kernel objects the harness drives and the syscalls around them: one
//! type per object, with all of its ioctls as methods.
//!
//! - [`ioctl`]: every request number (computed once, checked against the
//!   uapi values) and the raw `unsafe` calls;
//! - [`vhost`]: `/dev/vhost-net-kernel` (and the plain `/dev/vhost-net`),
//!   and the feature sets;
//! - [`vktest`]: `/dev/vktest`, the vDPA loopback device;
//! - [`tap`]: the TAP backend;
//! - [`netns`]: named network namespaces, as `ip netns` makes them;
//! - [`virtio`]: virtio and vDPA devices in sysfs (which interface is ours,
//!   what was negotiated);
//! - [`kmsg`]: the kernel log (`/dev/kmsg`) and kmemleak;
//! - [`caps`]: giving up CAP_NET_ADMIN (capset, a new user namespace);
//! - [`kstat`], [`kprofile`]: kernel counters and the tick profile, for
//!   `bench`.

pub mod caps;
pub mod ioctl;
pub mod kmsg;
pub mod kprofile;
pub mod kstat;
pub mod netns;
pub mod tap;
pub mod vhost;
pub mod virtio;
pub mod vktest;
