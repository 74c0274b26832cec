//! End-to-end streams: a TLS 1.3 session between the source and destination sidecars, carried
//! in data frames across any number of relays, which forward records they cannot read.
//!
//! [`FlowTransport`] makes one flow an `AsyncRead + AsyncWrite` byte pipe (inbound: payloads the
//! core hands over; outbound: data frames sent through the core), and tokio-rustls runs an
//! ordinary mutual-TLS session over it with the same certificates and verifier as peer links.
//! After the handshake each end checks that the other is the node it addressed. Two services
//! ride on streams: TCP tunnels (the CONNECT proxy) and message channels (the message API).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use genesis_trust::{CertInfo, PeerRole};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::PollSender;

use bytes::{Buf, Bytes, BytesMut};

use crate::error::Error;
use crate::frame::{Data, DataKind, Encoded, MAX_DATA_PAYLOAD};
use crate::peers::Conduct;
use crate::shared::{
    Command, FlowEntry, FlowEvent, FlowKey, Outgoing, Received, Shared, MAX_OPENING,
};

/// Service byte of a TCP tunnel stream.
pub const SERVICE_TUNNEL: u8 = 1;
/// Service byte of a message channel.
pub const SERVICE_MESSAGES: u8 = 2;
/// Set in the service byte of a direct stream's opening: no end-to-end TLS follows, the
/// stream rides the link's mutual TLS (only between neighbours, only for tunnels).
pub const DIRECT: u8 = 0x80;
/// How a member refuses an opening whose service it does not know (releases before direct
/// streams refuse a direct one so): the opener falls back to end-to-end TLS.
const UNKNOWN_SERVICE: &str = "unknown stream service";
/// Stream open header: service (1) + port (2).
const OPEN_HEADER: usize = 3;
/// The end-to-end handshake (across every hop) must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message body the message API accepts.
pub const MAX_MESSAGE: usize = 32 * 1024;
/// How long a sender waits for a delivery receipt.
pub const RECEIPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages in flight on one channel.
const CHANNEL_QUEUE: usize = 1024;

/// Frames queued towards one end-to-end stream (32 KiB each): the receiving link waits when
/// it is full, which is how backpressure reaches the sender.
const FLOW_QUEUE: usize = 64;

/// One flow as a byte pipe.
pub struct FlowTransport {
    shared: Arc<Shared>,
    key: FlowKey,
    inbound: mpsc::Receiver<FlowEvent>,
    pending: Bytes,
    /// The link this stream's frames take, picked once: a stream stays on its path, so a
    /// route change between equal paths cannot reorder its records. Its loss ends the stream.
    link: Option<(String, PollSender<Encoded>)>,
    open_header: Option<[u8; OPEN_HEADER]>,
    /// A direct stream: its frames take only the link to the far end itself, never a relay
    /// (they carry no end-to-end TLS).
    direct: bool,
    eof: bool,
    /// This end said a clean goodbye (StreamClose).
    shut: bool,
    /// The far end already knows the stream is over (it reset it, or it is unreachable).
    ended: bool,
}

impl FlowTransport {
    fn new(
        shared: Arc<Shared>,
        key: FlowKey,
        inbound: mpsc::Receiver<FlowEvent>,
        first: Bytes,
        open_header: Option<[u8; OPEN_HEADER]>,
        direct: bool,
    ) -> Self {
        FlowTransport {
            shared,
            key,
            inbound,
            pending: first,
            link: None,
            open_header,
            direct,
            eof: false,
            shut: false,
            ended: false,
        }
    }

    /// Waits for room on the link towards the destination and queues one data frame there.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        kind: DataKind,
        payload: Bytes,
    ) -> Poll<io::Result<()>> {
        let dst = &self.key.0;
        if !self.direct && !self.shared.data.next_hops.load().contains_key(dst) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("no route to {dst}"),
            )));
        }
        match &self.link {
            Some((next, tx)) if tx.is_closed() => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("the stream's path to {dst} broke: the link to {next} closed"),
                )));
            }
            Some(_) => {}
            None => {
                let next = if self.direct {
                    Some(dst.clone())
                } else {
                    self.shared.data.next_hops.load().get(dst).map(str::to_owned)
                };
                let tx = next.as_ref().and_then(|n| self.shared.data.links.load().get(n).cloned());
                let (Some(next), Some(tx)) = (next, tx) else {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("no open link towards {dst}"),
                    )));
                };
                self.shared.data.pin(&self.key, tx.clone());
                self.link = Some((next, PollSender::new(tx)));
            }
        }
        let (_, sender) = self.link.as_mut().expect("set above");
        ready!(sender.poll_reserve(cx)).map_err(|_| broken())?;
        let frame = Data {
            src: self.shared.identity.node().to_owned(),
            dst: dst.clone(),
            ttl: self.shared.config.routing.max_hops,
            kind,
            flow: self.key.1,
            payload,
        }
        .encode_parts();
        let m = &self.shared.metrics;
        m.frames.with_label_values(&["data", "out"]).inc();
        m.bytes.with_label_values(&["out"]).inc_by(frame.len() as u64);
        let (next, _) = self.link.as_ref().expect("set above");
        self.shared.record_own((next != dst).then_some(next.as_str()), frame.len());
        let (_, sender) = self.link.as_mut().expect("set above");
        sender.send_item(frame).map_err(|_| broken())?;
        Poll::Ready(Ok(()))
    }
}

impl Drop for FlowTransport {
    /// A stream dropped without its clean goodbye (an error, a timeout, a task that gave up)
    /// is reset: the far end hears of it at once instead of waiting on a dead stream.
    fn drop(&mut self) {
        self.shared.data.remove_flow(&self.key);
        if !self.shut && !self.ended {
            self.shared.metrics.streams_reset.with_label_values(&["sent"]).inc();
            let _ = self.shared.commands.try_send(Command::SendData {
                dst: self.key.0.clone(),
                kind: DataKind::Unreachable,
                flow: self.key.1,
                payload: format!("{RESET_PREFIX}{}", self.shared.identity.node()).into_bytes(),
            });
        }
    }
}

/// How a stream reset from its far end reads (an `Unreachable` frame from the far end itself).
const RESET_PREFIX: &str = "stream reset by ";

impl FlowTransport {
    /// The next payload the far end sent, as it arrived (empty at the end of the stream).
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        loop {
            if !self.pending.is_empty() || self.eof {
                return Poll::Ready(Ok(std::mem::take(&mut self.pending)));
            }
            match ready!(self.inbound.poll_recv(cx)) {
                Some(FlowEvent::Data(v)) => self.pending = v,
                Some(FlowEvent::Close) | None => self.eof = true,
                Some(FlowEvent::Unreachable(reason)) => {
                    self.ended = true;
                    self.shared.metrics.streams_reset.with_label_values(&["received"]).inc();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        reason,
                    )));
                }
            }
        }
    }
}

impl AsyncRead for FlowTransport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut chunk = ready!(this.poll_chunk(cx))?;
        let n = buf.remaining().min(chunk.len());
        buf.put_slice(&chunk.split_to(n));
        this.pending = chunk;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FlowTransport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// Packs as much of `bufs` as one frame holds (rustls hands over several sealed records at
    /// once): fewer, fuller frames for every hop to carry.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let header = this.open_header;
        let room = MAX_DATA_PAYLOAD - header.map_or(0, |h| h.len());
        let total = bufs.iter().map(|b| b.len()).sum::<usize>().min(room);
        let mut payload = Vec::with_capacity(total + header.map_or(0, |h| h.len()));
        payload.extend_from_slice(header.as_ref().map_or(&[][..], |h| &h[..]));
        let mut left = total;
        for b in bufs {
            let take = b.len().min(left);
            payload.extend_from_slice(&b[..take]);
            left -= take;
        }
        let kind = if header.is_some() { DataKind::StreamOpen } else { DataKind::StreamData };
        ready!(this.poll_send(cx, kind, Bytes::from(payload)))?;
        this.open_header = None;
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shut {
            return Poll::Ready(Ok(()));
        }
        // A stream that cannot say goodbye (route gone) is closed all the same.
        let _ = ready!(this.poll_send(cx, DataKind::StreamClose, Bytes::new()));
        this.shut = true;
        Poll::Ready(Ok(()))
    }
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the link carrying this stream closed")
}

type ClientStream = tokio_rustls::client::TlsStream<FlowTransport>;
type ServerStream = tokio_rustls::server::TlsStream<FlowTransport>;

/// Opens an end-to-end stream to `dst` for `service` (and `port` for tunnels), returning the
/// authenticated TLS stream once the destination proved it is `dst`.
pub async fn open(
    shared: &Arc<Shared>,
    dst: &str,
    service: u8,
    port: u16,
) -> Result<ClientStream, Error> {
    let flow = shared.next_id();
    let key = (dst.to_owned(), flow);
    let (tx, rx) = mpsc::channel(FLOW_QUEUE);
    shared.data.insert_flow(key.clone(), tx, false);
    let mut header = [service, 0, 0];
    header[1..].copy_from_slice(&port.to_be_bytes());
    let transport = FlowTransport::new(shared.clone(), key, rx, Bytes::new(), Some(header), false);
    let connector = TlsConnector::from(shared.tls.load().client.clone());
    let name = ServerName::try_from("peer.genesis-mesh.invalid").expect("valid name");
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, transport))
        .await
        .map_err(|_| {
            Error::Stream(format!(
                "{dst} did not complete the end-to-end handshake in {HANDSHAKE_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| Error::Stream(format!("end-to-end handshake with {dst} failed: {e}")))?;
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| CertInfo::require_identity(&c[0]).ok())
        .ok_or_else(|| Error::Stream("the destination presented no identity".into()))?;
    if peer.node() != dst {
        return Err(Error::Stream(format!("asked for {dst} but {peer} answered")));
    }
    Ok(tls)
}

/// A tunnel's far side: a stream to a member (end-to-end TLS, or direct over the link's TLS),
/// or this member's own app.
pub trait Tunnel: AsyncRead + AsyncWrite + Unpin + Send {
    /// The direct stream this tunnel is, if it is one: [`carry_app`] then moves its frames to
    /// and from the app's socket without copying them through buffers of its own.
    fn direct(&mut self) -> Option<&mut FlowTransport> {
        None
    }
}

impl Tunnel for FlowTransport {
    fn direct(&mut self) -> Option<&mut FlowTransport> {
        (self.direct && self.open_header.is_none()).then_some(self)
    }
}
impl Tunnel for ClientStream {}
impl Tunnel for ServerStream {}
impl Tunnel for tokio::net::TcpStream {}

/// Opens a tunnel to `dst:port`: waits for the destination's verdict on the port. To a
/// neighbour (the route's next hop is `dst` itself) the tunnel is direct, unless direct
/// streams are off here or `dst` refused one on this link; otherwise, and across relays, it
/// is an end-to-end TLS session.
pub async fn open_tunnel(
    shared: &Arc<Shared>,
    dst: &str,
    port: u16,
) -> Result<Box<dyn Tunnel>, Error> {
    let neighbour = shared.data.next_hops.load().get(dst).is_some_and(|next| next == dst)
        && shared.data.links.load().contains_key(dst);
    if shared.config.direct_streams && neighbour && shared.data.direct_allowed(dst) {
        match open_direct(shared, dst, port).await {
            Err(Error::Stream(reason)) if reason.contains(UNKNOWN_SERVICE) => {
                tracing::info!(%dst, %reason, "direct stream refused: using end-to-end TLS");
                shared.data.refuse_direct(dst);
            }
            Ok(stream) => return Ok(Box::new(stream)),
            Err(e) => return Err(e),
        }
    }
    let mut tls = open(shared, dst, SERVICE_TUNNEL, port).await?;
    tunnel_verdict(shared, dst, &mut tls).await?;
    Ok(Box::new(tls))
}

/// A direct tunnel to the neighbour `dst`: the opening (service and port, no TLS bytes) goes
/// on the link to `dst`, and so does every later frame; the link's mutual TLS authenticated
/// `dst` when it came up.
async fn open_direct(shared: &Arc<Shared>, dst: &str, port: u16) -> Result<FlowTransport, Error> {
    let flow = shared.next_id();
    let key = (dst.to_owned(), flow);
    let (tx, rx) = mpsc::channel(FLOW_QUEUE);
    shared.data.insert_flow(key.clone(), tx, true);
    let mut header = [SERVICE_TUNNEL | DIRECT, 0, 0];
    header[1..].copy_from_slice(&port.to_be_bytes());
    let mut transport = FlowTransport::new(shared.clone(), key, rx, Bytes::new(), None, true);
    let opening = Bytes::copy_from_slice(&header);
    std::future::poll_fn(|cx| transport.poll_send(cx, DataKind::StreamOpen, opening.clone()))
        .await
        .map_err(|e| Error::Stream(format!("opening a direct stream to {dst}: {e}")))?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, tunnel_verdict(shared, dst, &mut transport))
        .await
        .map_err(|_| {
        Error::Stream(format!("{dst} did not answer the tunnel in {HANDSHAKE_TIMEOUT:?}"))
    })??;
    shared.metrics.direct_streams.with_label_values(&["out"]).inc();
    Ok(transport)
}

/// Reads the destination's verdict on a tunnel: 0, or 1 with its reason.
async fn tunnel_verdict<S: AsyncRead + Unpin>(
    shared: &Arc<Shared>,
    dst: &str,
    stream: &mut S,
) -> Result<(), Error> {
    let status = stream
        .read_u8()
        .await
        .map_err(|e| Error::Stream(format!("{dst} closed the tunnel: {e}")))?;
    if status == 0 {
        shared.metrics.streams.with_label_values(&["out", "ok"]).inc();
        return Ok(());
    }
    let len = stream.read_u16().await.unwrap_or(0) as usize;
    let mut reason = vec![0u8; len.min(1024)];
    let _ = stream.read_exact(&mut reason).await;
    shared.metrics.streams.with_label_values(&["out", "refused"]).inc();
    // The destination could not reach its app on that port (the port itself was checked
    // against the network's list before the tunnel was opened).
    Err(Error::Stream(String::from_utf8_lossy(&reason).into_owned()))
}

/// Serves a stream a remote opened to us (on its first StreamOpen, delivered by neighbour
/// `from`). At most [`MAX_OPENING`] streams are in their handshake at once; past that, new
/// ones are refused at once, so a flood of openings costs bounded memory.
pub fn accept(
    shared: Arc<Shared>,
    key: FlowKey,
    first: Bytes,
    rx: mpsc::Receiver<FlowEvent>,
    from: Option<String>,
) {
    let Ok(opening) = shared.data.opening.clone().try_acquire_owned() else {
        shared.metrics.streams.with_label_values(&["in", "busy"]).inc();
        let reason = format!(
            "{} has {MAX_OPENING} streams opening already; try again",
            shared.identity.node()
        );
        tokio::spawn(async move { refuse_open(&shared, &key, &reason).await });
        return;
    };
    // Whoever delivered a forged opening pays for it.
    let blame = {
        let shared = shared.clone();
        move || {
            if let Some(node) = from {
                let conduct = Conduct::RefusedStream;
                let _ = shared.commands.try_send(Command::Misconduct { node, conduct });
            }
        }
    };
    tokio::spawn(async move {
        if first.len() < OPEN_HEADER {
            blame();
            return refuse_open(&shared, &key, "malformed stream open").await;
        }
        let (service, direct) = (first[0] & !DIRECT, first[0] & DIRECT != 0);
        let port = u16::from_be_bytes([first[1], first[2]]);
        if service == SERVICE_TUNNEL && !shared.config.allowed_ports.contains(&port) {
            shared.metrics.streams.with_label_values(&["in", "port_not_allowed"]).inc();
            let reason = format!(
                "port {port} is not allowed on {} (allowed: {:?})",
                shared.identity.node(),
                shared.config.allowed_ports
            );
            return refuse_open(&shared, &key, &reason).await;
        }
        if service != SERVICE_TUNNEL && service != SERVICE_MESSAGES {
            blame();
            return refuse_open(&shared, &key, &format!("{UNKNOWN_SERVICE} {service}")).await;
        }
        if direct {
            // `deliver` took the opening only from the link to its source itself.
            drop(opening);
            if service != SERVICE_TUNNEL || !shared.config.direct_streams {
                let reason = format!(
                    "{UNKNOWN_SERVICE} {} (direct streams are off on {}, or not for this service)",
                    first[0],
                    shared.identity.node()
                );
                return refuse_open(&shared, &key, &reason).await;
            }
            shared.metrics.direct_streams.with_label_values(&["in"]).inc();
            let rest = first.slice(OPEN_HEADER..);
            let transport = FlowTransport::new(shared.clone(), key, rx, rest, None, true);
            return serve_tunnel(shared, transport, port).await;
        }
        let transport = FlowTransport::new(
            shared.clone(),
            key.clone(),
            rx,
            first.slice(OPEN_HEADER..),
            None,
            false,
        );
        let acceptor = TlsAcceptor::from(shared.tls.load().server.clone());
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(transport)).await;
        drop(opening);
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                shared.metrics.streams.with_label_values(&["in", "refused"]).inc();
                shared.audit(
                    "stream-refused",
                    &key.0,
                    serde_json::json!({"reason": e.to_string()}),
                );
                blame();
                return;
            }
            Err(_) => {
                shared.metrics.streams.with_label_values(&["in", "timeout"]).inc();
                return;
            }
        };
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| shared.store.verify(c, SystemTime::now(), PeerRole::Client).ok());
        match peer {
            Some(p) if p.identity.node() == key.0 => {}
            other => {
                let who = other.map(|p| p.identity.uri()).unwrap_or_default();
                shared.audit("stream-refused", &key.0, serde_json::json!({"reason": format!("stream from {} authenticated as {who:?}", key.0)}));
                blame();
                return;
            }
        }
        match service {
            SERVICE_TUNNEL => serve_tunnel(shared, tls, port).await,
            _ => serve_messages(shared, tls, key.0).await,
        }
    });
}

async fn refuse_open(shared: &Arc<Shared>, key: &FlowKey, reason: &str) {
    let _ = shared
        .commands
        .send(Command::SendData {
            dst: key.0.clone(),
            kind: DataKind::Unreachable,
            flow: key.1,
            payload: reason.as_bytes().to_vec(),
        })
        .await;
    shared.data.remove_flow(key);
}

/// Whether `d` belongs to a direct stream (`flow_direct`: the stream it is for, if held here,
/// is direct; or it opens a direct one) but did not come over the link to its source (`from`:
/// the neighbour that delivered it, `None` when not from a link). A direct stream has no
/// end-to-end TLS to reject a forged frame, so its opening, data and close count only from
/// there; anything else claims a source it is not, or relays from one that does. An
/// `Unreachable` may come from any relay on the path, as for any stream: it ends the stream
/// with an error, never as a clean end.
fn forged_direct(flow_direct: Option<bool>, d: &Data, from: Option<&str>) -> bool {
    let direct = match flow_direct {
        Some(direct) => direct && d.kind != DataKind::Unreachable,
        None => {
            d.kind == DataKind::StreamOpen && d.payload.first().is_some_and(|s| s & DIRECT != 0)
        }
    };
    direct && from != Some(d.src.as_str())
}

/// Hands a data frame addressed to this member to its stream, waiting while the stream's queue
/// is full (backpressure); a `StreamOpen` for a new flow starts serving it.
pub async fn deliver(shared: Arc<Shared>, d: Data, from: Option<&str>) {
    let key = (d.src.clone(), d.flow);
    let flow = shared.data.flow(&key);
    if forged_direct(flow.as_ref().map(|f| f.direct), &d, from) {
        shared.metrics.dropped.with_label_values(&["direct_not_from_source"]).inc();
        // Audited once per forged opening (a flood of forged data frames costs the link that
        // carried them its standing, not the audit log its size).
        if let Some(node) = from.filter(|_| d.kind == DataKind::StreamOpen) {
            shared.audit(
                "stream-refused",
                &d.src,
                serde_json::json!({"reason": format!("a direct stream's opening from {} came from {node}", d.src)}),
            );
        }
        if let Some(node) = from {
            let conduct = Conduct::RefusedStream;
            let _ =
                shared.commands.send(Command::Misconduct { node: node.to_owned(), conduct }).await;
        }
        return;
    }
    match d.kind {
        DataKind::StreamOpen | DataKind::StreamData => match flow {
            Some(FlowEntry { tx, .. }) => {
                if tx.send(FlowEvent::Data(d.payload)).await.is_err() {
                    shared.metrics.dropped.with_label_values(&["stream_closed"]).inc();
                }
            }
            None if d.kind == DataKind::StreamOpen => {
                let (tx, rx) = mpsc::channel(FLOW_QUEUE);
                let direct = d.payload.first().is_some_and(|s| s & DIRECT != 0);
                shared.data.insert_flow(key.clone(), tx, direct);
                accept(shared, key, d.payload, rx, from.map(str::to_owned));
            }
            None => {
                // The stream ended here (or this member restarted): tell its source once, so
                // it does not wait on a stream nobody serves.
                shared.metrics.dropped.with_label_values(&["unknown_flow"]).inc();
                if shared.data.first_unknown(&key) {
                    let _ = shared
                        .commands
                        .send(Command::SendData {
                            dst: key.0,
                            kind: DataKind::Unreachable,
                            flow: key.1,
                            payload: format!(
                                "{RESET_PREFIX}{} (it holds no such stream)",
                                shared.identity.node()
                            )
                            .into_bytes(),
                        })
                        .await;
                }
            }
        },
        DataKind::StreamClose => {
            if let Some(FlowEntry { tx, .. }) = flow {
                let _ = tx.send(FlowEvent::Close).await;
            }
        }
        DataKind::Unreachable => {
            // From the far end itself (a reset): the flow is keyed by it. From a relay: our
            // flow is keyed by the destination, so match on the flow id.
            let reason = String::from_utf8_lossy(&d.payload).into_owned();
            let flows = match flow {
                Some(FlowEntry { tx, .. }) => vec![tx],
                None => shared.data.flows_with_id(d.flow),
            };
            for tx in flows {
                let _ = tx.try_send(FlowEvent::Unreachable(reason.clone()));
            }
        }
    }
}

async fn serve_tunnel<S: Tunnel>(shared: Arc<Shared>, mut tls: S, port: u16) {
    let target = std::net::SocketAddr::new(shared.config.app_host, port);
    match tokio::net::TcpStream::connect(target).await {
        Ok(mut tcp) => {
            let _ = tcp.set_nodelay(true);
            if tls.write_u8(0).await.is_err() || tls.flush().await.is_err() {
                return;
            }
            shared.metrics.streams.with_label_values(&["in", "ok"]).inc();
            match carry_app(&mut tcp, &mut tls).await {
                Ok((from_app, to_app)) => {
                    shared.metrics.stream_bytes.with_label_values(&["in"]).inc_by(to_app);
                    shared.metrics.stream_bytes.with_label_values(&["out"]).inc_by(from_app);
                }
                Err(e) => {
                    tracing::warn!(port, error = %e, "tunnel ended with an error: resetting");
                    reset_tcp(tcp);
                }
            }
        }
        Err(e) => {
            shared.metrics.streams.with_label_values(&["in", "connect_failed"]).inc();
            let reason = format!(
                "nothing accepts connections on port {port} of {}: {e}",
                shared.identity.node()
            );
            let _ = tls.write_u8(1).await;
            let _ = tls.write_u16(reason.len() as u16).await;
            let _ = tls.write_all(reason.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    }
}

/// Bytes a tunnel moves per read, each way: one full data frame's payload. tokio's default
/// (8 KiB) cut every transfer into quarter-size frames and four times the system calls.
const TUNNEL_BUFFER: usize = MAX_DATA_PAYLOAD;
/// What a direct stream's pump first reads from its app at a time; while reads fill it, the
/// room doubles up to [`PUMP_READ_BUSY`] (several frames per system call, split off the read
/// buffer without copying), and falls back as soon as a read comes up short, so an idle
/// tunnel holds a small buffer.
const PUMP_READ: usize = 16 * 1024;
const PUMP_READ_BUSY: usize = 4 * MAX_DATA_PAYLOAD;

/// Copies both ways between an app's socket and a tunnel until both ends finish: (bytes from
/// the app, bytes to the app). A direct stream is pumped without copy buffers
/// ([`pump_direct`]); anything else goes through tokio's bidirectional copy.
pub async fn carry_app<T>(app: &mut tokio::net::TcpStream, tunnel: &mut T) -> io::Result<(u64, u64)>
where
    T: Tunnel + ?Sized,
{
    if tunnel.direct().is_some() {
        let flow = tunnel.direct().expect("checked above");
        return pump_direct(app, flow).await;
    }
    tokio::io::copy_bidirectional_with_sizes(app, tunnel, TUNNEL_BUFFER, TUNNEL_BUFFER).await
}

/// The app's side of a direct stream, one way.
#[derive(Default)]
struct FromApp {
    /// Read from the app, not yet framed.
    buf: BytesMut,
    /// Room for the next read.
    room: usize,
    /// A frame's payload split off `buf`, waiting for room on the link.
    frame: Option<Bytes>,
    eof: bool,
    done: bool,
    bytes: u64,
}

/// The far end's side of a direct stream, one way.
#[derive(Default)]
struct ToApp {
    /// A received payload, not yet all written to the app.
    pending: Bytes,
    done: bool,
    bytes: u64,
}

/// Moves a direct stream's bytes between the app's socket and the link with one copy each way
/// in user space fewer than a copy loop: the app's bytes are read into a buffer that is split
/// into frame payloads as they are (the link seals them from there), and received payloads
/// are written to the app's socket as they arrived. Same ends as tokio's bidirectional copy:
/// the app's end of stream closes the stream cleanly, the stream's closes the app's write
/// side, an error on either side ends both.
async fn pump_direct(
    app: &mut tokio::net::TcpStream,
    flow: &mut FlowTransport,
) -> io::Result<(u64, u64)> {
    let mut up = FromApp { room: PUMP_READ, ..FromApp::default() };
    let mut down = ToApp::default();
    std::future::poll_fn(|cx| {
        let up_done = pump_from_app(cx, app, flow, &mut up)?;
        let down_done = pump_to_app(cx, app, flow, &mut down)?;
        match (up_done, down_done) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok((up.bytes, down.bytes))),
            _ => Poll::Pending,
        }
    })
    .await
}

fn pump_from_app(
    cx: &mut Context<'_>,
    app: &mut tokio::net::TcpStream,
    flow: &mut FlowTransport,
    up: &mut FromApp,
) -> Poll<io::Result<()>> {
    loop {
        if up.done {
            return Poll::Ready(Ok(()));
        }
        if let Some(frame) = &up.frame {
            ready!(flow.poll_send(cx, DataKind::StreamData, frame.clone()))?;
            up.bytes += frame.len() as u64;
            up.frame = None;
            continue;
        }
        if !up.buf.is_empty() {
            let n = up.buf.len().min(MAX_DATA_PAYLOAD);
            up.frame = Some(up.buf.split_to(n).freeze());
            continue;
        }
        if up.eof {
            ready!(Pin::new(&mut *flow).poll_shutdown(cx))?;
            up.done = true;
            continue;
        }
        // The last buffer went out in frames: a fresh one, sized to how reads have been going
        // (an app that went quiet leaves the tunnel a small one, not the tail of a big one).
        if up.buf.capacity() < up.room || (up.room == PUMP_READ && up.buf.capacity() > PUMP_READ) {
            up.buf = BytesMut::with_capacity(up.room);
        }
        let room = up.buf.capacity();
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut *app), cx, &mut up.buf))?;
        if n == 0 {
            up.eof = true;
        } else if n >= room {
            up.room = (up.room * 2).min(PUMP_READ_BUSY);
        } else {
            up.room = PUMP_READ;
        }
    }
}

fn pump_to_app(
    cx: &mut Context<'_>,
    app: &mut tokio::net::TcpStream,
    flow: &mut FlowTransport,
    down: &mut ToApp,
) -> Poll<io::Result<()>> {
    loop {
        if down.done {
            return Poll::Ready(Ok(()));
        }
        if !down.pending.is_empty() {
            let n = ready!(Pin::new(&mut *app).poll_write(cx, &down.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            down.pending.advance(n);
            down.bytes += n as u64;
            continue;
        }
        let chunk = ready!(flow.poll_chunk(cx))?;
        if chunk.is_empty() {
            ready!(Pin::new(&mut *app).poll_shutdown(cx))?;
            down.done = true;
        } else {
            down.pending = chunk;
        }
    }
}

/// Closes `tcp` with a reset (RST), not a clean end of stream: an app must never take a
/// stream cut short for a complete one.
pub fn reset_tcp(tcp: tokio::net::TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

const RECORD_MESSAGE: u8 = 1;
const RECORD_RECEIPT: u8 = 2;

async fn write_record<W: AsyncWrite + Unpin>(
    w: &mut W,
    ty: u8,
    id: u64,
    body: &[u8],
) -> io::Result<()> {
    let mut rec = Vec::with_capacity(13 + body.len());
    rec.push(ty);
    rec.extend_from_slice(&id.to_be_bytes());
    rec.extend_from_slice(&(body.len() as u32).to_be_bytes());
    rec.extend_from_slice(body);
    w.write_all(&rec).await?;
    w.flush().await
}

/// Reads message-channel records (type, id, length, body). Cancel safe: bytes read stay in its
/// buffer until a whole record is there, so `next` can lose a `select!` without losing a byte
/// (read field by field, a record cut across two reads would lose its first part that way).
#[derive(Default)]
struct RecordReader {
    buf: BytesMut,
}

impl RecordReader {
    async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<(u8, u64, Bytes)> {
        loop {
            let mut want = 13;
            if self.buf.len() >= 13 {
                let len = u32::from_be_bytes(self.buf[9..13].try_into().expect("4 bytes")) as usize;
                if len > MAX_MESSAGE {
                    let e = format!("record of {len} bytes, above {MAX_MESSAGE}");
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                if self.buf.len() >= 13 + len {
                    let head = self.buf.split_to(13);
                    let id = u64::from_be_bytes(head[1..9].try_into().expect("8 bytes"));
                    return Ok((head[0], id, self.buf.split_to(len).freeze()));
                }
                want += len;
            }
            // Room for the rest of this record at least, so a large one takes few reads.
            self.buf.reserve(want.saturating_sub(self.buf.len()).max(256));
            if r.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// Destination side of a message channel: queue each message for the app, answer a receipt.
async fn serve_messages(shared: Arc<Shared>, tls: ServerStream, from: String) {
    let (mut r, mut w) = tokio::io::split(tls);
    let mut records = RecordReader::default();
    while let Ok((ty, id, body)) = records.next(&mut r).await {
        if ty != RECORD_MESSAGE {
            break;
        }
        let item = Received {
            from: from.clone(),
            from_identity: None,
            kind: "message",
            topic: None,
            id,
            body: base64::engine::general_purpose::STANDARD.encode(&body),
        };
        let status: &[u8] = if shared.deliver(item) { &[0] } else { &[1] };
        shared
            .metrics
            .messages
            .with_label_values(&[if status[0] == 0 { "received" } else { "inbox_full" }])
            .inc();
        if write_record(&mut w, RECORD_RECEIPT, id, status).await.is_err() {
            break;
        }
    }
}

/// The result of a delivered message.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub id: u64,
    pub delivered: bool,
    pub latency_ms: f64,
}

/// Sends `body` to `dst` end to end and waits for its delivery receipt.
pub async fn send_message(
    shared: &Arc<Shared>,
    dst: &str,
    body: Vec<u8>,
) -> Result<Receipt, Error> {
    let start = Instant::now();
    let id = shared.next_id();
    let tx = channel(shared, dst).await?;
    let (reply, answer) = oneshot::channel();
    tx.send(Outgoing { id, body, reply })
        .await
        .map_err(|_| Error::Stream(format!("the channel to {dst} closed")))?;
    let result = tokio::time::timeout(RECEIPT_TIMEOUT, answer)
        .await
        .map_err(|_| {
            Error::NoReceipt(format!("no delivery receipt from {dst} within {RECEIPT_TIMEOUT:?}"))
        })?
        .map_err(|_| Error::Stream(format!("the channel to {dst} closed before the receipt")))
        .and_then(|r| r.map_err(Error::Stream));
    shared
        .metrics
        .messages
        .with_label_values(&[if result.is_ok() { "delivered" } else { "failed" }])
        .inc();
    result.map(|()| {
        let latency = start.elapsed().as_secs_f64();
        shared.metrics.receipt_latency.observe(latency);
        Receipt { id, delivered: true, latency_ms: latency * 1e3 }
    })
}

async fn channel(shared: &Arc<Shared>, dst: &str) -> Result<mpsc::Sender<Outgoing>, Error> {
    let mut channels = shared.messenger.channels.lock().await;
    if let Some(tx) = channels.get(dst).filter(|tx| !tx.is_closed()) {
        return Ok(tx.clone());
    }
    let tls = open(shared, dst, SERVICE_MESSAGES, 0).await?;
    let (tx, rx) = mpsc::channel(CHANNEL_QUEUE);
    channels.insert(dst.to_owned(), tx.clone());
    tokio::spawn(run_channel(tls, rx));
    Ok(tx)
}

/// Source side of a message channel: write messages, match receipts to waiting senders. A
/// receipt overdue by [`RECEIPT_TIMEOUT`] means the stream is broken somewhere: the channel is
/// torn down (the far end hears a reset) and the next message opens a fresh one.
async fn run_channel(tls: ClientStream, mut rx: mpsc::Receiver<Outgoing>) {
    let (mut r, mut w) = tokio::io::split(tls);
    let mut records = RecordReader::default();
    let mut waiting: HashMap<u64, (Instant, oneshot::Sender<Result<(), String>>)> = HashMap::new();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let why = loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(out) = out else { break "the channel closed".to_owned() };
                if let Err(e) = write_record(&mut w, RECORD_MESSAGE, out.id, &out.body).await {
                    let _ = out.reply.send(Err(e.to_string()));
                    break format!("the end-to-end stream failed: {e}");
                }
                waiting.insert(out.id, (Instant::now(), out.reply));
            }
            rec = records.next(&mut r) => match rec {
                Ok((RECORD_RECEIPT, id, status)) => {
                    if let Some((_, reply)) = waiting.remove(&id) {
                        let _ = reply.send(match status.first() {
                            Some(0) => Ok(()),
                            _ => Err("the destination's inbox is full".into()),
                        });
                    }
                }
                Ok((ty, ..)) => break format!("unexpected record type {ty} on a message channel"),
                Err(e) => break format!("the end-to-end stream failed: {e}"),
            },
            _ = check.tick() => {
                if waiting.values().any(|(sent, _)| sent.elapsed() > RECEIPT_TIMEOUT) {
                    break format!("a receipt is overdue by {RECEIPT_TIMEOUT:?}: channel reset");
                }
            }
        }
    };
    rx.close();
    for (_, (_, reply)) in waiting {
        let _ = reply.send(Err(why.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: DataKind, payload: &[u8]) -> Data {
        Data {
            src: "a".into(),
            dst: "b".into(),
            ttl: 8,
            kind,
            flow: 1,
            payload: payload.to_vec().into(),
        }
    }

    #[tokio::test]
    async fn a_record_cut_across_reads_survives_a_read_that_lost_a_select() {
        let (mut far, mut near) = tokio::io::duplex(1024);
        let mut rec = Vec::new();
        write_record(&mut rec, RECORD_RECEIPT, 7, b"ok").await.unwrap();
        let mut records = RecordReader::default();
        // The first five bytes arrive, then the read is dropped, as in a `select!` where a
        // message to send won.
        far.write_all(&rec[..5]).await.unwrap();
        let lost = tokio::time::timeout(Duration::from_millis(20), records.next(&mut near));
        assert!(lost.await.is_err(), "no whole record yet");
        far.write_all(&rec[5..]).await.unwrap();
        let (ty, id, body) = records.next(&mut near).await.unwrap();
        assert_eq!((ty, id, &body[..]), (RECORD_RECEIPT, 7, &b"ok"[..]));
        // A length above the limit is refused before its body is awaited.
        let mut huge = vec![RECORD_MESSAGE];
        huge.extend_from_slice(&8u64.to_be_bytes());
        huge.extend_from_slice(&(MAX_MESSAGE as u32 + 1).to_be_bytes());
        far.write_all(&huge).await.unwrap();
        let e = records.next(&mut near).await.unwrap_err();
        assert!(e.to_string().contains("above"), "{e}");
    }

    #[test]
    fn a_direct_streams_frames_count_only_from_the_link_to_its_source() {
        let open = frame(DataKind::StreamOpen, &[SERVICE_TUNNEL | DIRECT, 0x23, 0x8c]);
        assert!(!forged_direct(None, &open, Some("a")), "an opening over the source's link");
        assert!(forged_direct(None, &open, Some("m")), "an opening relayed in a's name");
        assert!(forged_direct(None, &open, None), "an opening not from a link");
        for kind in [DataKind::StreamData, DataKind::StreamClose] {
            let f = frame(kind, b"x");
            assert!(!forged_direct(Some(true), &f, Some("a")), "{kind:?} from the source");
            assert!(forged_direct(Some(true), &f, Some("m")), "{kind:?} injected by m");
            // End-to-end TLS streams are relayed; their TLS refuses what is forged.
            assert!(!forged_direct(Some(false), &f, Some("m")), "{kind:?} relayed by m");
        }
        let unreachable = frame(DataKind::Unreachable, b"path broke");
        assert!(!forged_direct(Some(true), &unreachable, Some("m")), "a relay's reset");
        // Openings of end-to-end TLS streams, and malformed ones, are judged by `accept`.
        let tls = frame(DataKind::StreamOpen, &[SERVICE_TUNNEL, 0x23, 0x8c]);
        assert!(!forged_direct(None, &tls, Some("m")));
        assert!(!forged_direct(None, &frame(DataKind::StreamOpen, &[]), Some("m")));
    }
}
