//! Accepting connections and serving each on a thread of its own, up to the bound; the
//! registry of open connections that a shutdown cuts.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::parse::{read_request, Refusal};
use super::{Flow, Handler, Limits};

/// How long a shutdown waits for the threads of the connections it cut (a delayed answer
/// finishes its delay first).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);
/// How long a refused connection is kept open after its `503`, for the client to finish
/// sending and close (see [`refusal_loop`]).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Refused connections waiting for their `503`; more are closed at once.
const REFUSALS_QUEUED: usize = 64;

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
    /// Answers the connections beyond the bound; ends after the accept loop.
    refusals: Option<JoinHandle<()>>,
    connections: Arc<Connections>,
}

impl Server {
    /// Starts accepting on `listener`; `name` names the threads (`<name>-accept`,
    /// `<name>-conn`, `<name>-refuse`).
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
        let (to_refuse, refused) = std::sync::mpsc::sync_channel(REFUSALS_QUEUED);
        let refusals = {
            let (stop, handler) = (Arc::clone(&stop), Arc::clone(&handler));
            std::thread::Builder::new()
                .name(format!("{name}-refuse"))
                .spawn(move || {
                    refusal_loop(
                        name,
                        refused,
                        handler.as_ref(),
                        limits.max_connections,
                        &stop,
                    );
                })?
        };
        let accept = {
            let (stop, connections) = (Arc::clone(&stop), Arc::clone(&connections));
            std::thread::Builder::new()
                .name(format!("{name}-accept"))
                .spawn(move || {
                    accept_loop(
                        name,
                        &listener,
                        limits,
                        &handler,
                        &stop,
                        &connections,
                        &to_refuse,
                    );
                })?
        };
        Ok(Server {
            addr,
            stop,
            accept: Some(accept),
            refusals: Some(refusals),
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
        // Its end closed the refusal queue: the refusal thread ends once the queue is empty
        // (it lingers no more, the stop flag being set).
        if let Some(refusals) = self.refusals.take() {
            let _ = refusals.join();
        }
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
    refusals: &SyncSender<TcpStream>,
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
            refuse(name, stream, refusals);
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
                refuse(name, stream, refusals);
            }
        }
    }
}

/// Answers `503` on a connection that cannot be served, and closes it.
/// Hands a connection beyond the bound to the refusal thread.
fn refuse(name: &str, stream: TcpStream, refusals: &SyncSender<TcpStream>) {
    if let Err(TrySendError::Full(_)) = refusals.try_send(stream) {
        tracing::warn!(
            listener = name,
            "too many connections, and too many refused ones waiting for their 503: closed"
        );
    }
}

/// Answers `503` on the connections beyond the bound, one after the other, until the
/// accept loop ends. A thread of its own, so that the accept loop never waits on a refused
/// client.
fn refusal_loop(
    name: &str,
    refused: Receiver<TcpStream>,
    handler: &dyn Handler,
    max: usize,
    stop: &AtomicBool,
) {
    let message =
        format!("the emulator serves at most {max} connections at once; close idle ones or retry");
    let answer = handler.refusal(503, &message);
    for mut stream in refused {
        tracing::warn!(
            listener = name,
            max_connections = max,
            "too many connections: answering 503"
        );
        let _ = stream.write_all(&answer);
        let _ = stream.shutdown(Shutdown::Write);
        // A lingering close (RFC 9112, 9.6): closing a socket that has unread data, or
        // that receives data afterwards (a request still on its way), resets it, and the
        // client loses the answer or fails to send. So read and drop what the client sends
        // until it closes, for a bounded time.
        let deadline = Instant::now() + REFUSAL_LINGER;
        let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
    }
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
