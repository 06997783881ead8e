//! `serve`: the RFC's --serve flow. Sets up vhost-net-kernel + vktest + TAP,
//! attaches, reports the two new interfaces, and holds them until a signal.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::attach::Rig;
use crate::fake::FakePair;
use crate::net::{if_index, virtio_device_of, LinkWatcher, Rtnl};

#[derive(Debug, Clone)]
pub struct ServeOpts {
    /// Print the interface line as JSON.
    pub json: bool,
    /// Let vhost add/strip the virtio-net header (VHOST_NET_F_VIRTIO_NET_HDR,
    /// TAP without IFF_VNET_HDR).
    pub vhost_hdr: bool,
    /// How long to wait for the virtio-net interface.
    pub timeout: Duration,
    /// Two TAPs bridged in user space instead of vhost + vktest (harness self-test).
    pub fake: bool,
}

/// The two interfaces the serve flow created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interfaces {
    pub h2g: String,
    pub g2h: String,
    pub h2g_ifindex: u32,
    pub g2h_ifindex: u32,
    /// The virtio device under the g2h interface (e.g. "virtio0"), empty if unknown.
    pub g2h_device: String,
}

impl Interfaces {
    /// `h2g=vhostkernel0 g2h=eth0`
    pub fn text_line(&self) -> String {
        format!("h2g={} g2h={}", self.h2g, self.g2h)
    }

    /// `{"h2g":"vhostkernel0","g2h":"eth0","h2g_ifindex":4,"g2h_ifindex":5,"g2h_device":"virtio0"}`
    pub fn json_line(&self) -> String {
        format!(
            "{{\"h2g\":\"{}\",\"g2h\":\"{}\",\"h2g_ifindex\":{},\"g2h_ifindex\":{},\"g2h_device\":\"{}\"}}",
            self.h2g, self.g2h, self.h2g_ifindex, self.g2h_ifindex, self.g2h_device
        )
    }

    /// Parse what `json_line` prints (flat object of strings and integers;
    /// interface and device names never need escaping).
    pub fn parse_json(line: &str) -> Result<Self> {
        let body = line
            .trim()
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .ok_or_else(|| anyhow!("not a JSON object: {line:?}"))?;
        let mut get = std::collections::HashMap::new();
        for field in body.split(',') {
            let (k, v) = field.split_once(':').ok_or_else(|| anyhow!("bad field {field:?} in {line:?}"))?;
            get.insert(k.trim().trim_matches('"').to_string(), v.trim().trim_matches('"').to_string());
        }
        let s = |k: &str| get.get(k).cloned().ok_or_else(|| anyhow!("missing {k} in {line:?}"));
        let n = |k: &str| -> Result<u32> { s(k)?.parse().with_context(|| format!("{k} in {line:?}")) };
        Ok(Interfaces {
            h2g: s("h2g")?,
            g2h: s("g2h")?,
            h2g_ifindex: n("h2g_ifindex")?,
            g2h_ifindex: n("g2h_ifindex")?,
            g2h_device: s("g2h_device").unwrap_or_default(),
        })
    }
}

/// Set everything up and attach; returns the rig and the interfaces.
async fn bring_up(opts: &ServeOpts) -> Result<(Rig, Interfaces)> {
    // Subscribe before anything is created, so no link event is missed.
    let mut watcher = LinkWatcher::new(None)?;
    let rtnl = Rtnl::new(None)?;
    let known: HashSet<u32> = rtnl.links().await?.iter().map(|l| l.index).collect();
    let rig = Rig::prepare(opts.vhost_hdr)?;
    let tap = rig.tap.name().to_string();
    rig.attach()?;
    let g2h = watcher
        .wait_new_link(
            &known,
            |l| {
                l.name != tap
                    && !l.name.starts_with("vhostkernel")
                    && virtio_device_of(&l.name).map(|d| d.starts_with("virtio")).unwrap_or(false)
            },
            opts.timeout,
            "the virtio-net interface to appear after VKTEST_ATTACH_VHOST",
        )
        .await?;
    let ifs = Interfaces {
        h2g_ifindex: if_index(&tap)?,
        h2g: tap,
        g2h_device: virtio_device_of(&g2h.name).unwrap_or_default(),
        g2h: g2h.name,
        g2h_ifindex: g2h.index,
    };
    Ok((rig, ifs))
}

/// What the serving process holds.
enum Held {
    Real(Rig),
    Fake(FakePair),
}

async fn bring_up_any(opts: &ServeOpts) -> Result<(Held, Interfaces)> {
    if opts.fake {
        let fake = FakePair::start()?;
        let ifs = Interfaces {
            h2g_ifindex: if_index(&fake.h2g)?,
            g2h_ifindex: if_index(&fake.g2h)?,
            h2g: fake.h2g.clone(),
            g2h: fake.g2h.clone(),
            g2h_device: String::new(),
        };
        Ok((Held::Fake(fake), ifs))
    } else {
        let (rig, ifs) = bring_up(opts).await?;
        Ok((Held::Real(rig), ifs))
    }
}

pub async fn serve(opts: &ServeOpts) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("install SIGUSR1 handler")?;

    let (held, ifs) = tokio::select! {
        r = bring_up_any(opts) => r?,
        _ = term.recv() => bail!("SIGTERM during setup"),
        _ = int.recv() => bail!("SIGINT during setup"),
    };
    let line = if opts.json { ifs.json_line() } else { ifs.text_line() };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("write interface line")?;
    out.flush().context("flush stdout")?;
    drop(out);

    match held {
        Held::Real(rig) => {
            let Rig { vhost, vktest, tap, efds } = rig;
            let mut vktest = Some(vktest);
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = usr1.recv() => {
                        if vktest.take().is_some() {
                            eprintln!("SIGUSR1: closed /dev/vktest, still holding /dev/vhost-net-kernel");
                        }
                    }
                }
            }
            // Close vhost before vktest (teardown scenario 2 covers the other order).
            drop(vhost);
            drop(vktest);
            drop(tap);
            drop(efds);
        }
        Held::Fake(fake) => {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = usr1.recv() => {
                        fake.close_g2h()?;
                        eprintln!("SIGUSR1: removed fake g2h interface {}", fake.g2h);
                    }
                }
            }
            fake.stop()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_roundtrip() {
        let i = Interfaces {
            h2g: "vhostkernel0".into(),
            g2h: "eth0".into(),
            h2g_ifindex: 4,
            g2h_ifindex: 5,
            g2h_device: "virtio0".into(),
        };
        assert_eq!(i.text_line(), "h2g=vhostkernel0 g2h=eth0");
        assert_eq!(
            i.json_line(),
            r#"{"h2g":"vhostkernel0","g2h":"eth0","h2g_ifindex":4,"g2h_ifindex":5,"g2h_device":"virtio0"}"#
        );
        assert_eq!(Interfaces::parse_json(&i.json_line()).unwrap(), i);
        assert!(Interfaces::parse_json("h2g=x").is_err());
    }
}
