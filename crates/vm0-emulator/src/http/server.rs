//! Accepting connections and serving each on a thread of its own, up to the bound; the
//! registry of open connections that a shutdown cuts.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::parse::{read_request, Refusal};
use super::{Flow, Handler, Limits};

/// How long a shutdown waits for the threads of the connections it cut (a delayed answer
/// finishes its delay first).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);
/// How long the accept loop reads what a refused connection sent before answering `503`:
/// closing a socket with unread data resets it, and the client would lose the answer.
const REFUSAL_READ: Duration = Duration::from_millis(50);

/// The connections being served, each by a clone of its socket, so that a shutdown can cut
/// them.
struct Connections {
    open: Mutex<HashMap<u64, TcpStream>>,
    next: AtomicU64,
    ended: Condvar,
}

impl Connections {
    /// Registers a connection; `None` when `max` are open already.
    fn register(&self, stream: &TcpStream, max: usize) -> Option<u64> {
        let clone = stream.try_clone().ok()?;
        let mut open = self.open.lock();
        if open.len() >= max {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        open.insert(id, clone);
        Some(id)
    }

    fn unregister(&self, id: u64) {
        let mut open = self.open.lock();
        open.remove(&id);
        if open.is_empty() {
            self.ended.notify_all();
        }
    }

    /// Shuts every open connection down: their threads read end-of-file (or fail to
    /// write) and end, and their clients see the connection closed.
    fn cut_all(&self) {
        for stream in self.open.lock().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Waits until every connection thread has ended, or `limit`.
    fn wait_all_ended(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut open = self.open.lock();
        while !open.is_empty() {
            if self.ended.wait_until(&mut open, deadline).timed_out() {
                return open.is_empty();
            }
        }
        true
    }
}

/// A running listener.
pub(crate) struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Connections>,
}

impl Server {
    /// Starts accepting on `listener`; `name` names the threads (`<name>-accept`,
    /// `<name>-conn`).
    pub fn spawn(
        name: &'static str,
        listener: TcpListener,
        limits: Limits,
        handler: Arc<dyn Handler>,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Connections {
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            ended: Condvar::new(),
        });
        let accept = {
            let (stop, connections) = (Arc::clone(&stop), Arc::clone(&connections));
            std::thread::Builder::new()
                .name(format!("{name}-accept"))
                .spawn(move || {
                    accept_loop(name, &listener, limits, &handler, &stop, &connections)
                })?
        };
        Ok(Server {
            addr,
            stop,
            accept: Some(accept),
            connections,
        })
    }

    /// Stops as the exit of the process would: the listener closed (new connections
    /// refused) and every open connection cut. Then waits for the connections' threads.
    pub fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // The accept loop only sees the flag when a connection arrives: make one. (It
        // fails only if the loop has ended already.)
        let _ = TcpStream::connect(self.addr);
        // The accept thread owns the listener: once it has ended, the listener is closed.
        let _ = accept.join();
        self.connections.cut_all();
        if !self.connections.wait_all_ended(SHUTDOWN_WAIT) {
            tracing::warn!(addr = %self.addr, "connection threads still running after the shutdown");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(
    name: &'static str,
    listener: &TcpListener,
    limits: Limits,
    handler: &Arc<dyn Handler>,
    stop: &AtomicBool,
    connections: &Arc<Connections>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(stream) => stream,
            Err(err) => {
                // Out of descriptors, or a connection reset before it was accepted: the
                // listener itself is fine. A short pause keeps a persistent error (EMFILE)
                // from spinning.
                tracing::warn!(listener = name, %err, "cannot accept a connection");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // Answers are written head then body: without Nagle off, a small body would wait
        // for the head's ACK, which a client on a kept-alive connection delays by 40 ms.
        let _ = stream.set_nodelay(true);
        let Some(id) = connections.register(&stream, limits.max_connections) else {
            refuse(name, stream, handler.as_ref(), limits.max_connections);
            continue;
        };
        let (conn_handler, conn_connections) = (Arc::clone(handler), Arc::clone(connections));
        let refused = stream.try_clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-conn"))
            .spawn(move || {
                serve_connection(stream, conn_handler.as_ref(), limits);
                conn_connections.unregister(id);
            });
        if let Err(err) = spawned {
            tracing::error!(listener = name, %err, "cannot start a connection thread");
            connections.unregister(id);
            if let Ok(stream) = refused {
                refuse(name, stream, handler.as_ref(), limits.max_connections);
            }
        }
    }
}

/// Answers `503` on a connection that cannot be served, and closes it.
fn refuse(name: &str, mut stream: TcpStream, handler: &dyn Handler, max: usize) {
    tracing::warn!(
        listener = name,
        max_connections = max,
        "too many connections: answering 503"
    );
    // Read what the client sent so far (its request, normally), so that closing the
    // socket does not reset it before the client reads the answer.
    let _ = stream.set_read_timeout(Some(REFUSAL_READ));
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf);
    let message =
        format!("the emulator serves at most {max} connections at once; close idle ones or retry");
    let _ = stream.write_all(&handler.refusal(503, &message));
    let _ = stream.shutdown(Shutdown::Write);
}

fn serve_connection(stream: TcpStream, handler: &dyn Handler, limits: Limits) {
    let _ = stream.set_read_timeout(Some(limits.idle_timeout));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    loop {
        let request = match read_request(&mut reader, &mut stream, limits.max_body) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(Refusal::Io(err)) => {
                tracing::debug!(%err, "connection ended while reading a request");
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            Err(Refusal::Status(status, message)) => {
                tracing::debug!(status, %message, "refused a request");
                let _ = stream.write_all(&handler.refusal(status, &message));
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        };
        let keep_alive = request.keep_alive;
        match handler.handle(&mut stream, request) {
            Ok(Flow::KeepAlive) if keep_alive => {}
            Ok(_) => {
                let _ = stream.flush();
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            Err(err) => {
                tracing::debug!(%err, "connection failed");
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}
