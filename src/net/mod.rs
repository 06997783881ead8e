//! Networking as the suite sees it: rtnetlink ([`rtnl`]: links, addresses,
//! namespace moves, link events) and ICMPv6 echo over raw sockets
//! ([`icmp`]).

pub mod icmp;
pub mod rtnl;

pub use rtnl::*;
