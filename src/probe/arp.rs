//! The neighbour prober (`arp`): the target's IPv4 address has a complete entry in this host's
//! neighbour table (`/proc/net/arp`), as Hive's ARP check asks of an instance on a bridge. A
//! datagram to the address's discard port first makes the kernel resolve it; the table is then
//! read until the entry is complete, failed, or the probe's time is up.
//!
//! IPv6 neighbours live behind netlink only; an IPv6 target is `insufficient-data` saying so.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::{Cause, Outcome, Reason, Target, Trace, net};

/// The entry of one address in `/proc/net/arp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// The hardware address (`00:00:00:00:00:00` while incomplete).
    pub mac: String,
    /// The interface.
    pub device: String,
    /// `ATF_COM`: the entry is complete (the neighbour answered).
    pub complete: bool,
}

const ATF_COM: u32 = 0x2;

/// The entry for `ip` in a `/proc/net/arp` text.
pub fn lookup(table: &str, ip: Ipv4Addr) -> Option<Neighbour> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || fields[0].parse::<Ipv4Addr>().ok()? != ip {
            return None;
        }
        let flags = u32::from_str_radix(fields[2].trim_start_matches("0x"), 16).unwrap_or(0);
        Some(Neighbour {
            mac: fields[3].to_owned(),
            device: fields[5].to_owned(),
            complete: flags & ATF_COM != 0 && fields[3] != "00:00:00:00:00:00",
        })
    })
}

pub(crate) async fn probe(target: &Target, deadline: Instant, trace: &mut Trace) -> Outcome {
    let addrs = match net::resolve(&target.host, 9, target.policy, trace).await {
        Ok(addrs) => addrs,
        Err(outcome) => return outcome,
    };
    let Some(ip) = addrs.iter().find_map(|a| match a.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }) else {
        return Outcome::unknown(
            Cause::Misconfigured,
            format!("{}: the arp probe checks IPv4 neighbours (IPv6's are only behind netlink)", target.host),
        );
    };
    if ip.is_loopback() {
        return Outcome::unknown(
            Cause::Misconfigured,
            format!("{ip} is a loopback address: it has no neighbour"),
        );
    }
    // Make the kernel resolve the address: one datagram to the discard port. A route that leads
    // nowhere is the answer already.
    match tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await {
        Ok(socket) => {
            if let Err(e) = socket.send_to(b"", SocketAddr::new(IpAddr::V4(ip), 9)).await {
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NetworkUnreachable | std::io::ErrorKind::HostUnreachable
                ) {
                    return Outcome::unhealthy(Reason::Unreachable, format!("{ip}: {e}"));
                }
                trace.step("solicit", || format!("send failed: {e}"));
            }
        }
        Err(e) => return Outcome::unknown(Cause::Local, format!("cannot open a UDP socket: {e}")),
    }
    let stop = deadline.checked_sub(Duration::from_millis(5)).unwrap_or(deadline);
    let mut last = None;
    loop {
        let table = match tokio::fs::read_to_string(Path::new("/proc/net/arp")).await {
            Ok(t) => t,
            Err(e) => return Outcome::unknown(Cause::Local, format!("cannot read /proc/net/arp: {e}")),
        };
        last = lookup(&table, ip).or(last);
        if let Some(n) = last.as_ref().filter(|n| n.complete) {
            trace.step("neighbour", || format!("{} on {}", n.mac, n.device));
            return Outcome::healthy(format!("{ip} is at {} on {}", n.mac, n.device));
        }
        if Instant::now() + Duration::from_millis(50) >= stop {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let message = match last {
        Some(n) => format!("{ip} did not answer ARP on {} (the entry is incomplete)", n.device),
        None => format!("{ip} has no neighbour entry (is it on a directly attached network?)"),
    };
    Outcome::unhealthy(Reason::NoNeighbour, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "IP address       HW type     Flags       HW address            Mask     Device\n\
        10.9.0.2         0x1         0x2         76:2f:1d:0a:9c:01     *        v0\n\
        10.9.0.3         0x1         0x0         00:00:00:00:00:00     *        v0\n";

    #[test]
    fn complete_and_incomplete_entries_are_told_apart() {
        let ok = lookup(TABLE, "10.9.0.2".parse().unwrap()).unwrap();
        assert_eq!(ok, Neighbour { mac: "76:2f:1d:0a:9c:01".into(), device: "v0".into(), complete: true });
        assert!(!lookup(TABLE, "10.9.0.3".parse().unwrap()).unwrap().complete);
        assert_eq!(lookup(TABLE, "10.9.0.4".parse().unwrap()), None);
    }
}
