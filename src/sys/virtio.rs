//! The virtio and vDPA devices as sysfs shows them: which interface is a
//! virtio-net one and under which vDPA device, and what its driver
//! negotiated. The one place that answers "is this our virtio-net".

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

/// Where sysfs is mounted (the functions below take the root as a parameter
/// so that unit tests can give them a tree of their own).
pub const SYSFS: &str = "/sys";

/// The virtio device behind a network interface, from
/// /sys/class/net/IF/device (e.g. "virtio1"), read in the current namespace.
pub fn virtio_device_of(ifname: &str) -> Result<String> {
    let p = format!("/sys/class/net/{ifname}/device");
    let target = std::fs::read_link(&p).with_context(|| format!("readlink {p}"))?;
    target
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow!("{p} points to {}", target.display()))
}

/// Whether interface `name` (in the current namespace) is a virtio-net
/// interface: its device is a virtio device. A TAP never is.
pub fn is_virtio_net(name: &str) -> bool {
    virtio_device_of(name).is_ok_and(|d| d.starts_with("virtio"))
}

/// Where registered vDPA devices show up.
pub const VDPA_DEVICES: &str = "/sys/bus/vdpa/devices";

/// Names of the entries of `dir` (empty if it does not exist).
pub fn dir_names(dir: impl AsRef<Path>) -> Result<BTreeSet<String>> {
    let dir = dir.as_ref();
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                e.map(|e| e.file_name().to_string_lossy().into_owned())
                    .with_context(|| format!("read {}", dir.display()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(e).with_context(|| format!("read {}", dir.display())),
    }
}

/// The vdpa devices registered now, under sysfs root `sys`.
pub fn vdpa_devices_in(sys: &str) -> Result<BTreeSet<String>> {
    dir_names(Path::new(sys).join("bus/vdpa/devices"))
}

/// The vdpa devices registered now ([`VDPA_DEVICES`]).
pub fn vdpa_devices() -> Result<BTreeSet<String>> {
    vdpa_devices_in(SYSFS)
}

/// The vdpa device above interface `name`: its `device` is a virtio device
/// whose parent is the vdpa device (/sys/devices/vdpaN/virtioM). None for
/// any other interface.
pub fn vdpa_of_interface(sys: &str, name: &str) -> Option<String> {
    let virtio = std::fs::canonicalize(format!("{sys}/class/net/{name}/device")).ok()?;
    let is_virtio = virtio.file_name()?.to_string_lossy().starts_with("virtio");
    let vdpa = virtio.parent()?.file_name()?.to_string_lossy().into_owned();
    (is_virtio && vdpa.starts_with("vdpa")).then_some(vdpa)
}

/// The network interfaces under vdpa device `vdpa`, each with the virtio
/// device it is made of: `(virtioM, NAME)` for every
/// /sys/bus/vdpa/devices/vdpaN/virtioM/net/NAME, sorted.
pub fn vdpa_net_interfaces(sys: &str, vdpa: &str) -> Result<Vec<(String, String)>> {
    let dev = Path::new(sys).join("bus/vdpa/devices").join(vdpa);
    let mut out = Vec::new();
    for virtio in dir_names(&dev)?.into_iter().filter(|c| c.starts_with("virtio")) {
        for name in dir_names(dev.join(&virtio).join("net"))? {
            out.push((virtio.clone(), name));
        }
    }
    Ok(out)
}

/// Parse a virtio device's `features` sysfs attribute: one '0'/'1' per bit,
/// bit 0 first (only the first 64 bits are kept).
pub fn parse_sysfs_features(s: &str) -> Result<u64> {
    let s = s.trim();
    anyhow::ensure!(!s.is_empty() && s.bytes().all(|c| c == b'0' || c == b'1'), "not a feature bit string: {s:?}");
    Ok(s.bytes().take(64).enumerate().filter(|(_, c)| *c == b'1').fold(0, |acc, (i, _)| acc | 1u64 << i))
}

/// Features the driver negotiated on virtio device `dev` (e.g. "virtio0").
pub fn virtio_negotiated_features(dev: &str) -> Result<u64> {
    let p = format!("/sys/bus/virtio/devices/{dev}/features");
    let s = std::fs::read_to_string(&p).with_context(|| format!("read {p}"))?;
    parse_sysfs_features(&s).with_context(|| format!("parse {p}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::vhost::RFC_FEATURES;

    #[test]
    fn sysfs_features() {
        let mut s = "0".repeat(64);
        s.replace_range(32..34, "11");
        s.replace_range(1..2, "1");
        assert_eq!(parse_sysfs_features(&format!("{s}\n")).unwrap(), RFC_FEATURES | 2);
        assert_eq!(parse_sysfs_features("1").unwrap(), 1);
        assert!(parse_sysfs_features("").is_err());
        assert!(parse_sysfs_features("10x").is_err());
    }
}
