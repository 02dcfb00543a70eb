//! Name resolution and connection set-up shared by the network probers.
//!
//! Probe sockets are closed with a zero linger (an RST instead of a FIN handshake), so that a node
//! probing thousands of targets does not pile sockets up in TIME-WAIT (kubernetes#89898), and
//! keep-alive is never used.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{Cause, Outcome, Reason, Trace};

/// Which addresses a probe may connect to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Allow link-local addresses, where cloud metadata services live. Off by default so that a
    /// health check cannot be used to read instance credentials (kubernetes#99425).
    pub allow_link_local: bool,
}

impl AddressPolicy {
    /// Whether `ip` may be connected to.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_link_local || !is_link_local(ip)
    }
}

/// Link-local addresses (169.254.0.0/16, fe80::/10) and the AWS IPv6 metadata address.
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4.is_link_local();
            }
            const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
            (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == AWS_METADATA_V6
        }
    }
}

/// Strips the brackets of an IPv6 literal.
pub(crate) fn bare_host(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// Resolves `host` to the addresses the policy permits.
pub(crate) async fn resolve(
    host: &str,
    port: u16,
    policy: AddressPolicy,
    trace: &mut Trace,
) -> Result<Vec<SocketAddr>, Outcome> {
    let bare = bare_host(host);
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => match tokio::net::lookup_host((bare, port)).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => {
                trace.step("resolve", || format!("failed: {e}"));
                return Err(Outcome::unhealthy(Reason::Dns, format!("cannot resolve {bare}: {e}")));
            }
        },
    };
    let permitted: Vec<SocketAddr> = addrs.iter().copied().filter(|a| policy.permits(a.ip())).collect();
    trace.step("resolve", || {
        let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        list.join(", ")
    });
    if permitted.is_empty() {
        if addrs.is_empty() {
            return Err(Outcome::unhealthy(Reason::Dns, format!("{bare} resolves to no address")));
        }
        return Err(Outcome::unknown(
            Cause::Misconfigured,
            format!(
                "{bare} is a link-local address (cloud metadata range); refused unless the target sets allowLinkLocal"
            ),
        ));
    }
    Ok(permitted)
}

/// Connects to the first address that accepts, with probe socket options set.
pub(crate) async fn connect(addrs: &[SocketAddr], trace: &mut Trace) -> Result<TcpStream, Outcome> {
    let socket = connect_socket(addrs, trace).await?;
    TcpStream::from_std(socket)
        .map_err(|e| Outcome::unknown(Cause::Local, format!("cannot register the connection: {e}")))
}

/// Connects like [`connect`], without handing the socket to the runtime: for probes that only
/// need to know the connection was accepted.
pub(crate) async fn connect_socket(
    addrs: &[SocketAddr],
    trace: &mut Trace,
) -> Result<std::net::TcpStream, Outcome> {
    let mut last: Option<(SocketAddr, io::Error)> = None;
    for &addr in addrs {
        match connect_one(addr).await {
            Ok(stream) => {
                trace.step("connect", || format!("connected to {addr}"));
                return Ok(stream);
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    match last {
        Some((addr, e)) => {
            trace.step("connect", || format!("{addr}: {e}"));
            Err(Outcome::unhealthy(io_reason(&e), format!("connect to {addr}: {e}")))
        }
        None => Err(Outcome::unknown(Cause::NoAddress, "no address to connect to")),
    }
}

/// One non-blocking connect. A peer on this machine (loopback, a pod behind a veth) usually
/// completes the handshake inside `connect()` itself, so readiness is checked once before the
/// socket is registered with the runtime to wait: most local probes never touch epoll.
async fn connect_one(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    // Reset on close: no TIME-WAIT. The socket is non-blocking, so close never waits.
    socket.set_linger(Some(std::time::Duration::ZERO))?;
    match socket.connect(&addr.into()) {
        Ok(()) => return Ok(socket.into()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => return Err(e),
    }
    let mut fds = [rustix::event::PollFd::new(&socket, rustix::event::PollFlags::OUT)];
    let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
    let ready = rustix::event::poll(&mut fds, Some(&zero)).map_err(io::Error::from)? > 0;
    if !ready {
        // A remote peer: wait for the handshake through the runtime.
        let stream = TcpStream::from_std(socket.into())?;
        stream.writable().await?;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        return stream.into_std();
    }
    match socket.take_error()? {
        Some(e) => Err(e),
        None => Ok(socket.into()),
    }
}

/// A probe connection that is reset, never shut down gracefully: `poll_shutdown` sends nothing,
/// and dropping the socket (zero linger) sends an RST. With a FIN exchange one side of every
/// probe would sit in TIME-WAIT for a minute, whichever closed first.
#[derive(Debug)]
pub(crate) struct ResetOnClose(pub(crate) TcpStream);

impl AsyncRead for ResetOnClose {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetOnClose {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The reason matching an I/O error of a connection.
pub(crate) fn io_reason(e: &io::Error) -> Reason {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => Reason::Refused,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Reason::Reset,
        HostUnreachable | NetworkUnreachable => Reason::Unreachable,
        TimedOut => Reason::Timeout,
        _ => Reason::Connect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_ranges() {
        for ip in ["169.254.169.254", "169.254.0.1", "fe80::1", "fd00:ec2::254", "::ffff:169.254.169.254"] {
            assert!(is_link_local(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.1", "10.0.0.1", "::1", "fd00::1", "8.8.8.8"] {
            assert!(!is_link_local(ip.parse().unwrap()), "{ip}");
        }
        let strict = AddressPolicy::default();
        assert!(!strict.permits("169.254.169.254".parse().unwrap()));
        assert!(AddressPolicy { allow_link_local: true }.permits("169.254.169.254".parse().unwrap()));
    }

    #[tokio::test]
    async fn metadata_address_is_refused_without_allow() {
        let mut trace = Trace::new(false);
        let err = resolve("169.254.169.254", 80, AddressPolicy::default(), &mut trace).await.unwrap_err();
        assert!(matches!(err, Outcome::Unknown { .. }), "{err:?}");
        assert!(err.message().contains("allowLinkLocal"));
    }
}
