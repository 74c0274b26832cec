//! Peer links: TCP + mutual TLS 1.3 (ALPN `genesis/1`), the hello exchange that binds the
//! frame stream to the certificate's identity, then a reader and a writer task per link.

use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use genesis_trust::{PeerIdentity, PeerRole};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::frame::{Data, DataKind, Encoded, Frame, FrameDecoder};
use crate::proto::forward::{FlowPins, Forward};
use crate::shared::{Command, LinkQueues, NewLink, Shared, CONTROL_QUEUE, DATA_QUEUE};

/// Connecting and the TLS handshake must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The peer's hello must arrive within this after the handshake.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Room a link reader asks for before each read (what rustls reads from the socket at a time).
/// Memory per link matters: a member with 100 idle links holds 100 of these.
const READ_CHUNK: usize = 4 * 1024;
/// While reads keep filling the room they were given (a bulk transfer), the room doubles up to
/// this, so a busy link reads several records per system call; it falls back to
/// [`READ_CHUNK`] as soon as a read comes up short.
const READ_CHUNK_BUSY: usize = 128 * 1024;
/// A link writer gathers queued frames up to about this many bytes into one vectored write:
/// rustls seals them into several records and hands them to the socket in one `writev`.
/// 256 KiB rather than 64: fewer, larger writes under bulk load cost the sender less per byte
/// and wake the receiver less often (iperf3 through 1 hop, 4 streams: 0.93× → 1.01× stunnel4,
/// docs/BENCHMARKS.md). Control frames still go first; one waits at most one batch.
const WRITE_BATCH: usize = 256 * 1024;
/// How much rustls may hold sealed and unsent on a link: a full batch, [`WRITE_BATCH`] plus its
/// last frame (at most [`crate::frame::MAX_BODY`] and a head), with the records' overhead.
/// rustls takes no more from a write than fits, and its default (64 KiB) sent the rest of each
/// batch in a second `writev` of a few dozen bytes.
const TLS_BUFFER_LIMIT: usize = WRITE_BATCH + 64 * 1024;
/// Slices in one vectored write (two per frame: head and payload).
const WRITE_SLICES: usize = 64;

static LINK_IDS: AtomicU64 = AtomicU64::new(1);

/// Accepts peer links until `shutdown`.
pub async fn listen(shared: Arc<Shared>, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if shared.draining.load(Ordering::Relaxed) {
            continue;
        }
        let shared = shared.clone();
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(shared.tls.load().server.clone());
            match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(mut tls)) => {
                    tls.get_mut().1.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
                    let chain = tls.get_ref().1.peer_certificates().map(|c| c.to_vec());
                    run_link(shared, tls, chain, false, addr.to_string(), started).await;
                }
                Ok(Err(e)) => refused(&shared, None, &addr.to_string(), &e.to_string()).await,
                Err(_) => tracing::debug!(%addr, "inbound handshake timed out"),
            }
        });
    }
}

/// Dials `addr` and runs the link.
pub async fn dial(shared: Arc<Shared>, addr: String) {
    let started = std::time::Instant::now();
    let failed = |reason: String| {
        shared.metrics.dials.with_label_values(&["failed"]).inc();
        Command::DialFailed { addr: addr.clone(), reason }
    };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return drop(shared.commands.send(failed(e.to_string())).await),
        Err(_) => return drop(shared.commands.send(failed("connect timed out".into())).await),
    };
    let _ = tcp.set_nodelay(true);
    let connector = TlsConnector::from(shared.tls.load().client.clone());
    let name = ServerName::try_from("peer.genesis-mesh.invalid").expect("valid name");
    match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(mut tls)) => {
            tls.get_mut().1.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
            shared.metrics.dials.with_label_values(&["ok"]).inc();
            let chain = tls.get_ref().1.peer_certificates().map(|c| c.to_vec());
            run_link(shared, tls, chain, true, addr, started).await;
        }
        // The handshake failed: most often the peer's certificate was refused.
        Ok(Err(e)) => {
            shared.metrics.dials.with_label_values(&["refused"]).inc();
            refused(&shared, None, &addr, &e.to_string()).await
        }
        Err(_) => drop(shared.commands.send(failed("TLS handshake timed out".into())).await),
    }
}

/// The next whole frame before the link is up (the hello, or a refusal).
async fn next_frame<R: AsyncRead + Unpin>(
    decoder: &mut FrameDecoder,
    reader: &mut R,
) -> Result<Frame, String> {
    loop {
        match decoder.next_frame() {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let n = reader.read_buf(decoder.read_buf(READ_CHUNK)).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before hello".into());
        }
    }
}

/// Writes `batch` in order with vectored writes, then empties it.
async fn write_batch<W: AsyncWrite + Unpin>(
    writer: &mut W,
    batch: &mut Vec<Encoded>,
) -> std::io::Result<()> {
    let mut first = 0;
    while first < batch.len() {
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
        let mut count = 0;
        for part in batch[first..].iter().flat_map(|e| [&e.head, &e.payload]) {
            if count == WRITE_SLICES {
                break;
            }
            if !part.is_empty() {
                slices[count] = IoSlice::new(part);
                count += 1;
            }
        }
        let mut n = writer.write_vectored(&slices[..count]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let e = &mut batch[first];
            let step = n.min(e.len());
            e.advance(step);
            n -= step;
            if e.is_empty() {
                first += 1;
            }
        }
        while batch.get(first).is_some_and(Encoded::is_empty) {
            first += 1;
        }
    }
    batch.clear();
    Ok(())
}

async fn refused(shared: &Shared, node: Option<String>, addr: &str, reason: &str) {
    let _ = shared
        .commands
        .send(Command::BadIdentity { node, addr: addr.to_owned(), reason: reason.to_owned() })
        .await;
}

/// After the handshake: exchange hellos, register with the core, pump frames both ways.
async fn run_link<S>(
    shared: Arc<Shared>,
    stream: S,
    chain: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    outbound: bool,
    addr: String,
    started: std::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // rustls already verified the chain with our store; verify again for the identity.
    let peer: PeerIdentity =
        match chain.as_deref().ok_or_else(|| "no certificate".to_owned()).and_then(|c| {
            shared
                .store
                .verify(
                    c,
                    SystemTime::now(),
                    if outbound { PeerRole::Server } else { PeerRole::Client },
                )
                .map_err(|e| e.to_string())
        }) {
            Ok(p) => p,
            Err(e) => return refused(&shared, None, &addr, &e).await,
        };
    let node = peer.identity.node().to_owned();
    let (mut reader, mut writer) = tokio::io::split(stream);
    if !outbound {
        // Ask the core before saying hello: a refused dialer then sees no link at all (no
        // link up and down, nothing for its routes to react to), only our peers and why.
        let (reply_tx, reply_rx) = oneshot::channel();
        let ask = Command::AdmitInbound { node: node.clone(), reply: reply_tx };
        if shared.commands.send(ask).await.is_err() {
            return;
        }
        let verdict = reply_rx.await.unwrap_or_else(|_| Err(("core stopped".into(), vec![])));
        if let Err((reason, peers)) = verdict {
            shared.metrics.handshakes.with_label_values(&["declined"]).inc();
            let mut bytes = Frame::PeerExchange { peers }.encode();
            bytes.extend_from_slice(&Frame::Close { reason }.encode());
            let _ = writer.write_all(&bytes).await;
            let _ = writer.flush().await;
            let _ = writer.shutdown().await;
            return;
        }
    }
    let hello = Frame::Hello {
        identity: shared.identity.uri(),
        listen: shared.config.advertise.clone(),
        zone: shared.config.zone.clone(),
    };
    if writer.write_all(&hello.encode()).await.is_err() || writer.flush().await.is_err() {
        let _ = shared
            .commands
            .send(Command::DialFailed { addr, reason: "hello not sent".into() })
            .await;
        return;
    }
    let mut decoder = FrameDecoder::new();
    let mut pins = FlowPins::default();
    let mut sweep = tokio::time::interval(PIN_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let first = tokio::time::timeout(HELLO_TIMEOUT, next_frame(&mut decoder, &mut reader)).await;
    let (listen, zone) = match first {
        Ok(Ok(Frame::Hello { identity, listen, zone })) if identity == peer.identity.uri() => {
            (listen, zone)
        }
        Ok(Ok(Frame::Hello { identity, .. })) => {
            let reason =
                format!("hello claims {identity} but the certificate is {}", peer.identity);
            return refused(&shared, Some(node), &addr, &reason).await;
        }
        // A member that will not take the link answers with its peers and a goodbye.
        Ok(Ok(Frame::PeerExchange { peers })) if outbound => {
            let reason = match next_frame(&mut decoder, &mut reader).await {
                Ok(Frame::Close { reason }) => reason,
                Ok(other) => format!("{:?} after a peer exchange, not hello", other.frame_type()),
                Err(e) => e,
            };
            shared.metrics.dials.with_label_values(&["declined"]).inc();
            let _ = shared.commands.send(Command::DialRefused { addr, reason, peers }).await;
            return;
        }
        Ok(Ok(other)) => {
            let reason = format!("first frame was {:?}, not hello", other.frame_type());
            return refused(&shared, Some(node), &addr, &reason).await;
        }
        Ok(Err(e)) => return refused(&shared, Some(node), &addr, &format!("bad hello: {e}")).await,
        Err(_) => return refused(&shared, Some(node), &addr, "no hello in time").await,
    };
    // Outbound: we know the address we dialled. Inbound: the peer's advertised address.
    let peer_addr = if outbound { addr.clone() } else { listen };
    let (control_tx, mut control_rx) = mpsc::channel::<Encoded>(CONTROL_QUEUE);
    let (data_tx, mut data_rx) = mpsc::channel::<Encoded>(DATA_QUEUE);
    let heard = Arc::new(AtomicU64::new(shared.now().as_millis() as u64));
    let cancel = CancellationToken::new();
    let link_id = LINK_IDS.fetch_add(1, Ordering::Relaxed);
    let (reply_tx, reply_rx) = oneshot::channel();
    let link = NewLink {
        node: node.clone(),
        addr: peer_addr,
        peer,
        outbound,
        queues: LinkQueues { control: control_tx, data: data_tx },
        heard: heard.clone(),
        cancel: cancel.clone(),
        link_id,
        // The dialer waited about three round trips for the peer's hello (TCP, TLS 1.3,
        // hello), the acceptor about two: a first cost for the link until pongs refine it.
        rtt: Some(started.elapsed() / if outbound { 3 } else { 2 }),
        zone,
    };
    if shared.commands.send(Command::LinkUp { link, reply: reply_tx }).await.is_err() {
        return;
    }
    let verdict = reply_rx.await.unwrap_or_else(|_| Err("core stopped".into()));
    if let Err(reason) = verdict {
        let _ = writer.write_all(&Frame::Close { reason: reason.clone() }.encode()).await;
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
        tracing::debug!(peer = %node, %reason, "link refused by the core");
        return;
    }
    let writer_cancel = cancel.clone();
    let writer_task = tokio::spawn(async move {
        let mut batch = Vec::new();
        loop {
            // Control frames first: a ping must not wait behind megabytes of data.
            let frame = tokio::select! {
                biased;
                _ = writer_cancel.cancelled() => break,
                f = control_rx.recv() => f,
                f = data_rx.recv() => f,
            };
            let Some(frame) = frame else { break };
            // Gather what is already queued (control first) into one write, then flush.
            let mut size = frame.len();
            batch.push(frame);
            while size < WRITE_BATCH {
                match control_rx.try_recv().or_else(|_| data_rx.try_recv()) {
                    Ok(more) => {
                        size += more.len();
                        batch.push(more);
                    }
                    Err(_) => break,
                }
            }
            if write_batch(&mut writer, &mut batch).await.is_err() || writer.flush().await.is_err()
            {
                break;
            }
            if batch.capacity() > WRITE_SLICES {
                batch = Vec::new();
            }
        }
        // Deliver a queued goodbye before closing.
        batch.clear();
        while let Ok(frame) = control_rx.try_recv() {
            batch.push(frame);
        }
        let _ = write_batch(&mut writer, &mut batch).await;
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
        writer_cancel.cancel();
    });
    let mut failure = true;
    let mut reason = String::from("closed");
    let mut room = READ_CHUNK;
    // Frames decoded together with the hello.
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if matches!(frame, Frame::Close { .. }) {
                        failure = false;
                    }
                    let size = decoder.last_frame_len();
                    heard.store(shared.now().as_millis() as u64, Ordering::Relaxed);
                    let frame = match frame {
                        // Data takes the fast path; only exceptions reach the core.
                        Frame::Data(d) => {
                            match relay_or_deliver(&shared, &node, &mut pins, d, size).await {
                                Some(d) => Frame::Data(d),
                                None => continue,
                            }
                        }
                        other => other,
                    };
                    if shared
                        .commands
                        .send(Command::Frame { node: node.clone(), link_id, frame, size })
                        .await
                        .is_err()
                    {
                        cancel.cancel();
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    reason = error.to_string();
                    let _ = shared
                        .commands
                        .send(Command::BadFrame { node: node.clone(), link_id, error })
                        .await;
                    cancel.cancel();
                    break;
                }
            }
        }
        if cancel.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            // Only while this link relays streams: an idle link must not wake its reader
            // four times a second (100 idle members spent ~0.15 of a core on wakeups).
            _ = sweep.tick(), if !pins.is_empty() => {
                reset_broken_paths(&shared, &mut pins).await;
                continue;
            }
            r = reader.read_buf(decoder.read_buf(room)) => match r {
                Ok(0) => { reason = "peer closed the connection".into(); break; }
                Ok(n) => {
                    room = if n >= room { (room * 2).min(READ_CHUNK_BUSY) } else { READ_CHUNK };
                }
                Err(e) => { reason = e.to_string(); break; }
            }
        }
    }
    cancel.cancel();
    let _ = writer_task.await;
    let _ = shared.commands.send(Command::LinkDown { node, link_id, failure, reason }).await;
}

/// How often a link reader looks for streams it relays whose onward link closed.
const PIN_SWEEP: Duration = Duration::from_millis(250);

/// Resets, at both ends, the streams this reader relayed onto a link that has since closed:
/// their records are lost with it, and an end waiting for an answer would otherwise wait for
/// its own timeout.
async fn reset_broken_paths(shared: &Arc<Shared>, pins: &mut FlowPins) {
    let links = shared.data.links.load();
    let broken = pins.sweep(|n| links.get(n).is_some_and(|tx| !tx.is_closed()));
    drop(links);
    let me = shared.identity.node();
    for (src, dst, flow) in broken {
        let reason = format!("stream reset: its path broke at {me}");
        for end in [src, dst] {
            let payload = reason.clone().into_bytes();
            let reset = Command::SendData { dst: end, kind: DataKind::Unreachable, flow, payload };
            let _ = shared.commands.send(reset).await;
        }
    }
}

/// The data fast path of a link reader: deliver to a local stream, or relay to the next hop,
/// waiting for room in either queue (hop-by-hop backpressure, never a drop). Returns the frame
/// when the core must decide (hop limit reached, no route). `pins` keeps each stream that
/// arrives on this link on one next hop.
async fn relay_or_deliver(
    shared: &Arc<Shared>,
    from: &str,
    pins: &mut FlowPins,
    mut d: Data,
    size: usize,
) -> Option<Data> {
    let m = &shared.metrics;
    m.frames.with_label_values(&["data", "in"]).inc();
    m.bytes.with_label_values(&["in"]).inc_by(size as u64);
    let me = shared.identity.node();
    if d.kind == DataKind::StreamOpen && d.dst != me && shared.relay().saturated() {
        // Beyond our relay share: a new stream through us is refused (its source hears why
        // and our routes already cost more); streams through us already go on.
        let reason = {
            let mut relay = shared.relay();
            relay.refused();
            relay.refusal(me, shared.now())
        };
        m.dropped.with_label_values(&["relay_refused"]).inc();
        let refusal = Command::SendData {
            dst: d.src,
            kind: DataKind::Unreachable,
            flow: d.flow,
            payload: reason.into_bytes(),
        };
        let _ = shared.commands.send(refusal).await;
        return None;
    }
    let next_hop = |dst: &str| shared.data.next_hops.load().get(dst).map(str::to_owned);
    let links = shared.data.links.load();
    let alive = |n: &str| links.get(n).is_some_and(|tx| !tx.is_closed());
    let now = std::time::Instant::now();
    let (next, ttl) = match pins.decide(me, &d, now, alive, next_hop) {
        Forward::Deliver => {
            drop(links);
            shared.record_own((d.src != from).then_some(from), size);
            crate::stream::deliver(shared.clone(), d, Some(from)).await;
            return None;
        }
        Forward::Relay { next, ttl } => (next, ttl),
        // The node decides again and answers the source.
        Forward::Drop { .. } => return Some(d),
    };
    let Some(tx) = links.get(&next).cloned() else { return Some(d) };
    drop(links);
    d.ttl = ttl;
    shared.capture_relayed(&d.payload);
    shared.record_relayed(from, &d.src, size);
    // The payload goes on as it arrived, a slice of this link's read buffer.
    let frame = d.encode_parts();
    m.forwarded.inc();
    m.frames.with_label_values(&["data", "out"]).inc();
    m.bytes.with_label_values(&["out"]).inc_by(frame.len() as u64);
    if tx.send(frame).await.is_err() {
        m.dropped.with_label_values(&["link_closed"]).inc();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A socket that takes at most `step` bytes per write, vectored or not.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        writes: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.writes += 1;
            let mut left = self.step;
            for b in bufs {
                let n = b.len().min(left);
                self.out.extend_from_slice(&b[..n]);
                left -= n;
            }
            Poll::Ready(Ok(self.step - left))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_batch_goes_out_whole_and_in_order_however_the_socket_cuts_its_writes() {
        let data = |flow, n| {
            Data {
                src: "a".into(),
                dst: "b".into(),
                ttl: 4,
                kind: DataKind::StreamData,
                flow,
                payload: vec![flow as u8; n].into(),
            }
            .encode_parts()
        };
        let frames = vec![
            data(1, 5000),
            Encoded::from(Frame::Ping { nonce: 9 }.encode()),
            data(2, 0),
            data(3, 30_000),
        ];
        let expected: Vec<u8> =
            frames.iter().flat_map(|e| [&e.head[..], &e.payload[..]].concat()).collect();
        for step in [1, 7, 4096, 1 << 20] {
            let mut socket = Trickle { out: Vec::new(), step, writes: 0 };
            let mut batch = frames.clone();
            write_batch(&mut socket, &mut batch).await.unwrap();
            assert_eq!(socket.out, expected, "step {step}");
            assert!(batch.is_empty());
            if step == 1 << 20 {
                assert_eq!(socket.writes, 1, "a socket that takes it all gets one write");
            }
        }
    }
}
