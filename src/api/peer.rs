//! Who is at the other end of an API connection, as the kernel tells it (`docs/security.md`).
//!
//! Every connection is attributed once, when it is accepted, never per request: on the unix
//! socket from `SO_PEERCRED`; on TCP from a loopback peer by asking the kernel's socket table
//! (`sock_diag`) which user owns the client's end of exactly this connection (its 4-tuple). A
//! peer that cannot be attributed (a remote address, a lookup that found nothing) is
//! [`Caller::Unattributed`] and can only use the API with a token. TLS changes nothing here:
//! the attribution is made on the TCP connection under it.

use std::net::{IpAddr, SocketAddr};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};
use tokio::net::{TcpListener, UnixListener};

use super::tls::TlsTcpListener;

/// The identity of one API connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A local process; the kernel vouches for its user.
    Local { uid: u32, via: Via },
    /// A peer no local user can be named for: only a token lets it in.
    Unattributed { peer: String, why: String },
}

/// How a local caller reached the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    UnixSocket,
    Loopback,
}

impl Caller {
    /// The uid, for a local caller.
    pub fn uid(&self) -> Option<u32> {
        match self {
            Caller::Local { uid, .. } => Some(*uid),
            Caller::Unattributed { .. } => None,
        }
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => Caller::Local {
                uid: cred.uid(),
                via: Via::UnixSocket,
            },
            Err(e) => Caller::Unattributed {
                peer: "the unix socket".into(),
                why: format!("SO_PEERCRED failed: {e}"),
            },
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        let peer = *stream.remote_addr();
        match stream.io().local_addr() {
            Ok(local) => attribute_tcp(local, peer),
            Err(e) => Caller::Unattributed {
                peer: peer.to_string(),
                why: format!("the connection's local address is unknown: {e}"),
            },
        }
    }
}

impl Connected<IncomingStream<'_, TlsTcpListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, TlsTcpListener>) -> Self {
        let peer = *stream.remote_addr();
        match stream.io().get_ref().0.local_addr() {
            Ok(local) => attribute_tcp(local, peer),
            Err(e) => Caller::Unattributed {
                peer: peer.to_string(),
                why: format!("the connection's local address is unknown: {e}"),
            },
        }
    }
}

/// Attributes a TCP connection accepted on `local` from `peer`.
pub fn attribute_tcp(local: SocketAddr, peer: SocketAddr) -> Caller {
    let (local, peer) = (unmap(local), unmap(peer));
    let unattributed = |why: String| Caller::Unattributed {
        peer: peer.to_string(),
        why,
    };
    if !peer.ip().is_loopback() {
        return unattributed("it comes from another host".into());
    }
    match owner_of(peer, local) {
        Ok(Some(owner)) if owner.inode != 0 => Caller::Local {
            uid: owner.uid,
            via: Via::Loopback,
        },
        // A socket without an inode was closed by its process (orphaned, or a time-wait
        // remnant whose uid the kernel reports as 0): nobody can be named for it.
        Ok(Some(_)) => unattributed("its client closed the connection".into()),
        Ok(None) => unattributed("the kernel has no socket for it".into()),
        Err(e) => unattributed(format!("the kernel's socket table cannot be read: {e}")),
    }
}

/// An IPv4 address written as IPv6 (`::ffff:127.0.0.1`, on a dual-stack listener) as IPv4.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// The owner of a local TCP socket, as `sock_diag` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SocketOwner {
    uid: u32,
    inode: u32,
}

/// Asks the kernel for the TCP socket whose own address is `src` and whose peer is `dst`: the
/// client's end of a connection the daemon accepted. One exact lookup, not a dump of the table.
fn owner_of(src: SocketAddr, dst: SocketAddr) -> std::io::Result<Option<SocketOwner>> {
    let family = if src.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: src.port(),
                destination_port: dst.port(),
                source_address: src.ip(),
                destination_address: dst.ip(),
                interface_id: 0,
                // All ones: "no cookie", match on the addresses alone.
                cookie: [0xff; 8],
            },
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);

    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    socket.send(&buf, 0)?;
    // The kernel answers a sock_diag request while handling the send, so the answer is queued
    // by now; reading without blocking keeps a runtime thread from ever waiting here.
    socket.set_non_blocking(true)?;
    let mut answer = Vec::with_capacity(8192);
    socket.recv(&mut answer, 0)?;
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(&answer)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => Ok(Some(SocketOwner {
            uid: r.header.uid,
            inode: r.header.inode,
        })),
        NetlinkPayload::Error(e) if e.raw_code() == -libc_enoent() => Ok(None),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        _ => Ok(None),
    }
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn this_uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn a_loopback_connection_is_attributed_to_its_user() {
        for host in ["127.0.0.1:0", "[::1]:0"] {
            let listener = TcpListener::bind(host).unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, peer) = listener.accept().unwrap();
            let caller = attribute_tcp(server.local_addr().unwrap(), peer);
            assert_eq!(
                caller,
                Caller::Local {
                    uid: this_uid(),
                    via: Via::Loopback
                },
                "{host}"
            );
            drop(client);
        }
    }

    #[test]
    fn a_closed_client_socket_is_not_attributed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        // Closed by its process, the client's end lingers in FIN_WAIT or TIME_WAIT with no
        // inode, where the kernel reports uid 0: that must never read as root.
        drop(client);
        let caller = attribute_tcp(server.local_addr().unwrap(), peer);
        assert!(matches!(caller, Caller::Unattributed { .. }), "{caller:?}");
    }

    #[test]
    fn remote_and_unknown_peers_are_not_attributed() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        assert!(matches!(
            attribute_tcp(local, remote),
            Caller::Unattributed { .. }
        ));
        // A loopback 4-tuple no socket has.
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(matches!(
            attribute_tcp(local, nobody),
            Caller::Unattributed { .. }
        ));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5".parse().unwrap();
        assert_eq!(unmap(mapped), "127.0.0.1:5".parse::<SocketAddr>().unwrap());
    }
}
