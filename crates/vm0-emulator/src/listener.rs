//! Stopping a listener as the exit of the process would: new connections refused, and
//! every connection it accepted closed.
//!
//! Tests run the emulator inside their own process and stop it to play a server that went
//! away. Closing the listeners is not enough for that: `tiny_http` owns the sockets it
//! accepted and offers no way to close them, so a client's kept-alive connection would stay
//! open and a request sent on it would never be answered; the client would see a hung
//! server instead of a gone one. Killing a `vm0-emulator` process closes those sockets, so
//! [`cut_accepted`] does the same by hand. Linux only (`/proc/self/fd`), like vm0fs.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Waits until connections to `addr` are refused, that is until the listener that was
/// there is closed (`tiny_http` closes its listener on its own thread, a little after its
/// server is dropped). Gives up after `limit`: another listener may have taken the address.
pub fn wait_until_closed(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => return,
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Shuts down, in both directions, every TCP connection of this process whose local
/// address is `local`: the connections a listener on `local` accepted. Their owners then
/// read end-of-file and their peers see the connection closed.
pub fn cut_accepted(local: SocketAddr) {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in fds.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<RawFd>().ok())
        else {
            continue;
        };
        // Work on a duplicate: its owner may close the number and open something else
        // under it at any moment, but the duplicate keeps naming the descriptor it was
        // made from, so the checks and the shutdown below are about one and the same socket.
        // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor and touches nothing else; on a
        // number that is not open it fails with EBADF.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            continue;
        }
        // SAFETY: `dup` was just created by this function and nothing else owns it. Taken as
        // a `TcpStream` only to ask for its addresses: on a descriptor that is not a
        // connected TCP socket those calls fail, and nothing is done to it.
        let socket = TcpStream::from(unsafe { OwnedFd::from_raw_fd(dup) });
        if socket.local_addr().ok() == Some(local) && socket.peer_addr().is_ok() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        // Dropping `socket` closes the duplicate only.
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn the_accepted_connections_of_a_closed_listener_are_cut() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        // An unrelated connection of the same process stays open.
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut other_client = TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let (_other_accepted, _) = other.accept().unwrap();

        drop(listener);
        wait_until_closed(addr, Duration::from_secs(5));
        cut_accepted(addr);

        assert!(
            TcpStream::connect(addr).is_err(),
            "a new connection is refused"
        );
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            client.read(&mut buf).unwrap(),
            0,
            "the peer sees end-of-file"
        );
        other_client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let err = other_client.read(&mut buf).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "the other connection is still open: {err}"
        );
        drop(accepted);
    }
}
