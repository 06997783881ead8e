//! rtnetlink helpers: links, addresses, namespaces moves, and event waits.
//! Every wait is driven by netlink notifications and bounded by a timeout.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::channel::mpsc::UnboundedReceiver;
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourMessage;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::SocketAddr;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, MulticastGroup};
use tokio::time::timeout;

use crate::sys::netns;

type Events = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// A link as seen in a netlink message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
}

fn link_of(msg: &LinkMessage) -> Link {
    let name = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default();
    Link { index: msg.header.index, name }
}

fn ns_label(ns: Option<&str>) -> String {
    match ns {
        Some(n) => format!("namespace {n}"),
        None => "the current namespace".to_string(),
    }
}

/// Open an rtnetlink connection (optionally subscribed to groups) inside
/// namespace `ns`, and spawn its driver on the current tokio runtime.
fn connect(ns: Option<&str>, groups: &[MulticastGroup]) -> Result<(Handle, Events)> {
    let rt = tokio::runtime::Handle::current();
    let groups = groups.to_vec();
    let (conn, handle, events) = netns::run_in(ns, move || {
        let _guard = rt.enter();
        if groups.is_empty() {
            rtnetlink::new_connection().context("open rtnetlink socket")
        } else {
            rtnetlink::new_multicast_connection(&groups).context("open rtnetlink multicast socket")
        }
    })
    .with_context(|| format!("rtnetlink in {}", ns_label(ns)))?;
    tokio::spawn(conn);
    Ok((handle, events))
}

/// An rtnetlink request handle bound to one namespace.
#[derive(Clone)]
pub struct Rtnl {
    handle: Handle,
    ns: Option<String>,
}

impl Rtnl {
    pub fn new(ns: Option<&str>) -> Result<Self> {
        let (handle, _events) = connect(ns, &[])?;
        Ok(Rtnl { handle, ns: ns.map(str::to_string) })
    }

    fn where_(&self) -> String {
        ns_label(self.ns.as_deref())
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .with_context(|| format!("RTM_GETLINK dump in {}", self.where_()))?;
        Ok(msgs.iter().map(link_of).collect())
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Link> {
        self.links()
            .await?
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| anyhow!("no interface {name} in {}", self.where_()))
    }

    /// Move link `index` into namespace `ns_name` (IFLA_NET_NS_FD).
    pub async fn move_to_netns(&self, index: u32, ns_name: &str) -> Result<()> {
        let f = netns::open(ns_name)?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).setns_by_fd(f.as_raw_fd()).build())
            .execute()
            .await
            .with_context(|| format!("RTM_SETLINK ifindex {index}: move into namespace {ns_name}"))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| format!("RTM_SETLINK ifindex {index} up in {}", self.where_()))
    }

    /// Add an IPv6 address with IFA_F_NODAD (usable as soon as the link runs).
    pub async fn add_addr_nodad(&self, index: u32, addr: Ipv6Addr, prefix: u8) -> Result<()> {
        let mut req = self.handle.address().add(index, IpAddr::V6(addr), prefix);
        let msg = req.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        req.execute()
            .await
            .with_context(|| format!("RTM_NEWADDR {addr}/{prefix} nodad on ifindex {index} in {}", self.where_()))
    }

    pub async fn create_veth(&self, a: &str, b: &str) -> Result<()> {
        self.handle
            .link()
            .add(LinkVeth::new(a, b).build())
            .execute()
            .await
            .with_context(|| format!("RTM_NEWLINK veth {a}/{b} in {}", self.where_()))
    }

    pub async fn del_link(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .with_context(|| format!("RTM_DELLINK ifindex {index} in {}", self.where_()))
    }

    /// Forget the IPv6 neighbours learnt on `index` (a peer that came back
    /// may have a new MAC address).
    pub async fn flush_neighbours(&self, index: u32) -> Result<()> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet6)
            .execute()
            .try_collect()
            .await
            .with_context(|| format!("RTM_GETNEIGH dump in {}", self.where_()))?;
        for m in msgs.into_iter().filter(|m| m.header.ifindex == index) {
            // An entry may vanish meanwhile; that is what we want anyway.
            let _ = self.handle.neighbours().del(m).execute().await;
        }
        Ok(())
    }
}

fn addr_msg_usable(m: &AddressMessage, index: u32, addr: Ipv6Addr) -> bool {
    if m.header.index != index {
        return false;
    }
    let mut has = false;
    let mut flags = u32::from(m.header.flags.bits());
    for a in &m.attributes {
        match a {
            AddressAttribute::Address(IpAddr::V6(x)) if *x == addr => has = true,
            AddressAttribute::Flags(f) => flags = f.bits(),
            _ => {}
        }
    }
    let bad = AddressFlags::Tentative | AddressFlags::Dadfailed;
    has && flags & bad.bits() == 0
}

/// A change to a link, from RTNLGRP_LINK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    New(Link),
    Del(Link),
}

/// Subscription to link notifications in one namespace. Create it before the
/// action whose effect you wait for, so no event can be missed.
pub struct LinkWatcher {
    events: Events,
    ns: Option<String>,
}

impl LinkWatcher {
    pub fn new(ns: Option<&str>) -> Result<Self> {
        let (_handle, events) = connect(ns, &[MulticastGroup::Link])?;
        Ok(LinkWatcher { events, ns: ns.map(str::to_string) })
    }

    /// Next link event, or an error naming `what` after `limit`.
    pub async fn next(&mut self, limit: Duration, what: &str) -> Result<LinkEvent> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (msg, _) = match timeout(left, self.events.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => bail!(
                    "netlink link event stream in {} closed while waiting for {what}",
                    ns_label(self.ns.as_deref())
                ),
                Err(_) => bail!(
                    "timed out after {:.1}s in {} waiting for {what}",
                    limit.as_secs_f64(),
                    ns_label(self.ns.as_deref())
                ),
            };
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    return Ok(LinkEvent::New(link_of(&l)))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                    return Ok(LinkEvent::Del(link_of(&l)))
                }
                _ => continue,
            }
        }
    }

    /// Wait for a RTM_NEWLINK of an index not in `known` whose name passes `pred`.
    pub async fn wait_new_link(
        &mut self,
        known: &HashSet<u32>,
        pred: impl Fn(&Link) -> bool,
        limit: Duration,
        what: &str,
    ) -> Result<Link> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let LinkEvent::New(l) = self.next(left, what).await? {
                if !known.contains(&l.index) && pred(&l) {
                    return Ok(l);
                }
            }
        }
    }

    /// Wait for the RTM_DELLINK of `index`.
    pub async fn wait_del_link(&mut self, index: u32, limit: Duration, what: &str) -> Result<Link> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let LinkEvent::Del(l) = self.next(left, what).await? {
                if l.index == index {
                    return Ok(l);
                }
            }
        }
    }
}

/// A namespace made ready to receive an interface: one rtnetlink socket
/// opened inside it, subscribed to link and IPv6 address events before
/// anything moves, so the move and the address are both seen as events
/// (no dump, no missed notification). Used alike for the vhost pair and veths.
pub struct Landing {
    ns: String,
    rtnl: Rtnl,
    events: Events,
}

impl Landing {
    pub fn new(ns: &str) -> Result<Self> {
        let (handle, events) = connect(Some(ns), &[MulticastGroup::Link, MulticastGroup::Ipv6Ifaddr])?;
        Ok(Landing { ns: ns.to_string(), rtnl: Rtnl { handle, ns: Some(ns.to_string()) }, events })
    }

    /// Move link `index` (called `name`) from `from`'s namespace into this
    /// one, add `addr`/64 with NODAD and set it up. Returns its index here.
    /// The address becomes usable once the link has carrier: see
    /// [`Landing::wait_usable`].
    pub async fn receive(
        &mut self,
        from: &Rtnl,
        index: u32,
        name: &str,
        addr: Ipv6Addr,
        limit: Duration,
    ) -> Result<u32> {
        let here = if from.ns.as_deref() == Some(self.ns.as_str()) {
            // Already here (a veth created in place): a move would be a no-op
            // without any event.
            index
        } else {
            from.move_to_netns(index, &self.ns).await?;
            let what = format!("{name} to arrive in namespace {}", self.ns);
            self.next_event(limit, &what, |p| match p {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)).filter(|l| l.name == name).map(|l| l.index),
                _ => None,
            })
            .await?
        };
        self.rtnl.add_addr_nodad(here, addr, 64).await?;
        self.rtnl.set_up(here).await?;
        Ok(here)
    }

    /// Wait until `addr` on link `index` is neither tentative nor dad-failed.
    pub async fn wait_usable(&mut self, index: u32, addr: Ipv6Addr, limit: Duration) -> Result<()> {
        let what = format!("address {addr} on ifindex {index} to become usable");
        self.next_event(limit, &what, |p| match p {
            RouteNetlinkMessage::NewAddress(m) if addr_msg_usable(m, index, addr) => Some(()),
            _ => None,
        })
        .await
    }

    /// The first event (since subscribing) that `pick` accepts.
    async fn next_event<T>(
        &mut self,
        limit: Duration,
        what: &str,
        pick: impl Fn(&RouteNetlinkMessage) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match timeout(left, self.events.next()).await {
                Ok(Some((msg, _))) => {
                    if let NetlinkPayload::InnerMessage(p) = &msg.payload {
                        if let Some(v) = pick(p) {
                            return Ok(v);
                        }
                    }
                }
                Ok(None) => bail!("netlink event stream of namespace {} closed while waiting for {what}", self.ns),
                Err(_) => {
                    bail!("timed out after {:.1}s waiting for {what} (namespace {})", limit.as_secs_f64(), self.ns)
                }
            }
        }
    }
}

/// ifindex of `name` in the namespace of the calling thread.
pub fn if_index(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).with_context(|| format!("if_nametoindex({name})"))
}
