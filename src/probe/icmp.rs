//! The ICMP prober: a small burst of echo requests; healthy when no more of them are lost than
//! allowed. IPv4 and IPv6.
//!
//! It uses the unprivileged ICMP datagram sockets Linux offers to the groups in
//! `net.ipv4.ping_group_range` (the kernel then fills in the identifier and the checksum and
//! hands back only the replies to this socket). Where they are not permitted it falls back to a
//! raw socket, which needs `CAP_NET_RAW`; with neither, the probe cannot run and says which
//! setting to change — `insufficient-data`, never a failure.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::time::Instant;

use super::{Cause, Outcome, Reason, Target, Trace, human, net};

/// A validated ICMP probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IcmpSpec {
    /// Echo requests per probe.
    pub count: u32,
    /// Time between two requests.
    pub interval: Duration,
    /// The highest share of lost requests that still passes, percent.
    pub max_loss_percent: u32,
}

impl Default for IcmpSpec {
    fn default() -> Self {
        IcmpSpec { count: 3, interval: Duration::from_millis(200), max_loss_percent: 50 }
    }
}

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
const PAYLOAD: &[u8; 16] = b"vigil icmp probe";

/// How the socket was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An unprivileged ICMP datagram socket.
    Datagram,
    /// A raw socket (`CAP_NET_RAW`).
    Raw,
}

fn open(ip: IpAddr) -> Result<(Socket, Kind), String> {
    let (domain, protocol) = match ip {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let datagram = Socket::new(domain, Type::DGRAM, Some(protocol));
    let (socket, kind) = match datagram {
        Ok(s) => (s, Kind::Datagram),
        Err(dgram) if matches!(dgram.kind(), io::ErrorKind::PermissionDenied) => {
            match Socket::new(domain, Type::RAW, Some(protocol)) {
                Ok(s) => (s, Kind::Raw),
                Err(raw) => {
                    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range")
                        .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
                        .unwrap_or_else(|_| "unknown".to_owned());
                    return Err(format!(
                        "ICMP is not permitted here: unprivileged ICMP sockets are refused ({dgram}; \
                         net.ipv4.ping_group_range is \"{range}\", which must include this process's \
                         group) and raw sockets need CAP_NET_RAW ({raw})"
                    ));
                }
            }
        }
        Err(e) => return Err(format!("cannot open an ICMP socket: {e}")),
    };
    socket.set_nonblocking(true).map_err(|e| format!("cannot set up the ICMP socket: {e}"))?;
    Ok((socket, kind))
}

/// The Internet checksum of `data` (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut packet = vec![if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 }, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(PAYLOAD);
    if !v6 {
        // ICMPv6's checksum covers a pseudo-header; the kernel computes it for every ICMPv6
        // socket. ICMPv4's is ours on a raw socket (a datagram socket recomputes it anyway).
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The sequence number of an echo reply to us in `packet` (which starts with the IPv4 header on
/// an IPv4 raw socket).
fn reply_seq(packet: &[u8], v6: bool, kind: Kind, id: u16) -> Option<u16> {
    let icmp = if !v6 && kind == Kind::Raw {
        let ihl = usize::from(packet.first()? & 0x0f) * 4;
        packet.get(ihl..)?
    } else {
        packet
    };
    let reply = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    if icmp.len() < 8 || icmp[0] != reply || icmp[1] != 0 {
        return None;
    }
    // A datagram socket's identifier is the kernel's, and it delivers only our replies.
    if kind == Kind::Raw && u16::from_be_bytes([icmp[4], icmp[5]]) != id {
        return None;
    }
    if icmp.get(8..8 + PAYLOAD.len()) != Some(PAYLOAD.as_slice()) {
        return None;
    }
    Some(u16::from_be_bytes([icmp[6], icmp[7]]))
}

pub(crate) async fn probe(spec: &IcmpSpec, target: &Target, deadline: Instant, trace: &mut Trace) -> Outcome {
    let addrs = match net::resolve(&target.host, 0, target.policy, trace).await {
        Ok(addrs) => addrs,
        Err(outcome) => return outcome,
    };
    let Some(addr) = addrs.first().copied() else {
        return Outcome::unhealthy(Reason::Dns, format!("{} resolves to no address", target.host));
    };
    let ip = addr.ip();
    let v6 = ip.is_ipv6();
    let (socket, kind) = match open(ip) {
        Ok(s) => s,
        Err(why) => return Outcome::unknown(Cause::Local, why),
    };
    trace.step("socket", || format!("{kind:?} ICMP socket to {ip}").to_lowercase());
    // A datagram socket of another protocol is driven like a UDP one (send_to, recv_from).
    let socket = match tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(socket)) {
        Ok(s) => s,
        Err(e) => return Outcome::unknown(Cause::Local, format!("cannot watch the ICMP socket: {e}")),
    };
    let id = fastrand::u16(..);
    let to = SocketAddr::new(ip, 0);
    let start = Instant::now();
    // Replies are awaited until shortly before the probe's deadline, so that a partial answer is
    // judged as such rather than as a timeout.
    let stop = deadline.checked_sub(Duration::from_millis(5)).unwrap_or(deadline);
    let mut sent: Vec<Instant> = Vec::new();
    let mut rtts: Vec<Option<Duration>> = vec![None; spec.count as usize];
    let mut next_send = start;
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        if sent.len() < spec.count as usize && now >= next_send {
            let seq = u16::try_from(sent.len()).unwrap_or(u16::MAX);
            let packet = echo_request(v6, id, seq);
            if let Err(e) = socket.send_to(&packet, to).await {
                return match e.kind() {
                    io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                        Outcome::unhealthy(Reason::Unreachable, format!("{ip}: {e}"))
                    }
                    _ => Outcome::unknown(Cause::Local, format!("cannot send an echo request to {ip}: {e}")),
                };
            }
            sent.push(now);
            next_send = now + spec.interval;
            continue;
        }
        let all_sent = sent.len() == spec.count as usize;
        if all_sent && rtts.iter().all(Option::is_some) {
            break;
        }
        let wake = if all_sent { stop } else { next_send.min(stop) };
        if now >= stop {
            break;
        }
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                match received {
                    Ok((n, _from)) => {
                        if let Some(seq) = reply_seq(&buf[..n], v6, kind, id)
                            && let Some(at) = sent.get(usize::from(seq))
                            && let Some(slot) = rtts.get_mut(usize::from(seq))
                            && slot.is_none()
                        {
                            *slot = Some(Instant::now().saturating_duration_since(*at));
                        }
                    }
                    Err(e) => return Outcome::unknown(Cause::Local, format!("cannot read ICMP replies: {e}")),
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
    judge(spec, ip, sent.len(), &rtts, trace)
}

fn judge(spec: &IcmpSpec, ip: IpAddr, sent: usize, rtts: &[Option<Duration>], trace: &mut Trace) -> Outcome {
    let got: Vec<Duration> = rtts.iter().flatten().copied().collect();
    let lost = sent.saturating_sub(got.len());
    let loss = (lost * 100).checked_div(sent).unwrap_or(100);
    trace.step("replies", || format!("{}/{sent}", got.len()));
    let rtt = if got.is_empty() {
        String::new()
    } else {
        let min = got.iter().min().copied().unwrap_or_default();
        let max = got.iter().max().copied().unwrap_or_default();
        let avg = got.iter().sum::<Duration>() / u32::try_from(got.len()).unwrap_or(1);
        format!(", rtt min/avg/max {}/{}/{}", human(min), human(avg), human(max))
    };
    let text = format!("{ip}: {}/{sent} replies, {loss}% loss{rtt}", got.len());
    if got.is_empty() {
        Outcome::unhealthy(Reason::Timeout, text)
    } else if loss > spec.max_loss_percent as usize {
        Outcome::unhealthy(Reason::PacketLoss, format!("{text}, above {}%", spec.max_loss_percent))
    } else {
        Outcome::healthy(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_of_an_echo_request_verifies() {
        let packet = echo_request(false, 0x1234, 7);
        assert_eq!(checksum(&packet), 0, "a packet with its checksum sums to zero");
        assert_eq!(&packet[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn only_our_echo_replies_count() {
        let mut reply = echo_request(false, 0x1234, 2);
        reply[0] = ECHO_REPLY_V4;
        assert_eq!(reply_seq(&reply, false, Kind::Datagram, 0), Some(2));
        // On a raw socket the IPv4 header comes first, and the identifier must be ours.
        let mut raw = vec![0x45; 1];
        raw.extend_from_slice(&[0; 19]);
        raw.extend_from_slice(&reply);
        assert_eq!(reply_seq(&raw, false, Kind::Raw, 0x1234), Some(2));
        assert_eq!(reply_seq(&raw, false, Kind::Raw, 0x4321), None, "another prober's");
        // Our own request, seen by a raw socket on loopback, is not a reply.
        let mut request = vec![0x45; 1];
        request.extend_from_slice(&[0; 19]);
        request.extend_from_slice(&echo_request(false, 0x1234, 2));
        assert_eq!(reply_seq(&request, false, Kind::Raw, 0x1234), None);
    }

    #[test]
    fn loss_is_judged_against_the_limit() {
        let spec = IcmpSpec::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let ms = Duration::from_millis;
        let mut trace = Trace::new(false);
        let all = judge(&spec, ip, 3, &[Some(ms(1)), Some(ms(2)), Some(ms(3))], &mut trace);
        assert_eq!(all.kind(), "healthy", "{all:?}");
        assert_eq!(all.message(), "192.0.2.1: 3/3 replies, 0% loss, rtt min/avg/max 1.0ms/2.0ms/3.0ms");
        let one_lost = judge(&spec, ip, 3, &[Some(ms(1)), None, Some(ms(3))], &mut trace);
        assert_eq!(one_lost.kind(), "healthy", "33% is within 50%: {one_lost:?}");
        let two_lost = judge(&spec, ip, 3, &[None, None, Some(ms(3))], &mut trace);
        assert_eq!(two_lost.reason(), Some(Reason::PacketLoss));
        assert!(
            two_lost.message().ends_with("66% loss, rtt min/avg/max 3.0ms/3.0ms/3.0ms, above 50%"),
            "{two_lost:?}"
        );
        let none = judge(&spec, ip, 3, &[None, None, None], &mut trace);
        assert_eq!(none.reason(), Some(Reason::Timeout));
        assert_eq!(none.message(), "192.0.2.1: 0/3 replies, 100% loss");
    }
}
