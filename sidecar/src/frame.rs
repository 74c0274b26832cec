//! The peer-link frame codec (sans-IO): versioned, length-prefixed, bounded binary frames.
//!
//! Wire form (docs/PROTOCOL.md): `len:u32 version:u8 type:u8 body`, big-endian, where `len`
//! counts `version`, `type` and `body`. [`FrameDecoder`] is fed bytes and yields frames; it
//! checks the length against the frame type's own bound as soon as the 6-byte header is in,
//! so a peer cannot make it buffer more than one bounded frame.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

/// Version of the frame protocol; a frame of another version is refused.
pub const PROTOCOL_VERSION: u8 = 2;
/// Header: length (4), version (1), type (1).
pub const HEADER_LEN: usize = 6;
/// Application payload of one data frame. Streams are cut into chunks of at most this size;
/// A TLS record (at most 16 KiB plus overhead) fits one frame whole.
pub const MAX_DATA_PAYLOAD: usize = 32 * 1024;
/// Body bound for every frame type except CRL data: a data frame with its addressing, or a
/// route update full of adverts, fits easily.
pub const MAX_BODY: usize = 48 * 1024;
/// CRL data may be as large as the largest CRL we accept.
pub const MAX_CRL_BODY: usize = genesis_trust::crl::MAX_CRL_BYTES + 8;
/// A node name (DNS-1123 subdomain).
pub const MAX_NAME: usize = 253;
/// An identity URI.
pub const MAX_URI: usize = genesis_trust::identity::MAX_IDENTITY_LEN;
/// `host:port`.
pub const MAX_ADDR: usize = 261;
/// Adverts per route update: bounded so an update stays under [`MAX_BODY`] with certificates.
pub const MAX_ADVERTS: usize = 32;
/// Addresses per peer exchange.
pub const MAX_PEER_ADDRS: usize = 32;
/// A DER leaf certificate in a route advert.
pub const MAX_CERT: usize = 2048;
/// A signature (DER ECDSA P-256 is at most 72 bytes; Ed25519 64).
pub const MAX_SIG: usize = 128;
/// A topic name.
pub const MAX_TOPIC: usize = 128;
/// A zone (a Kubernetes label value).
pub const MAX_ZONE: usize = 63;
/// A close reason.
pub const MAX_REASON: usize = 256;
/// A control envelope id (32 hex digits) with room to spare.
pub const MAX_ACK_ID: usize = 64;
/// Metric value that withdraws a route.
pub const METRIC_INFINITY: u16 = u16::MAX;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame on a link, both directions: who I am (must match my TLS certificate),
    /// where I accept links (empty if nowhere) and my zone (empty if not known).
    Hello { identity: String, listen: String, zone: String },
    /// Liveness and RTT probe.
    Ping { nonce: u64 },
    /// Answer to a ping with the same nonce.
    Pong { nonce: u64 },
    /// Distance-vector route adverts.
    RouteUpdate { adverts: Vec<RouteAdvert> },
    /// Ask the destination to announce a newer sequence number (after a route loss).
    SeqnoRequest { dest: String, seqno: u32, hops_left: u8 },
    /// Addresses of other members, for discovery.
    PeerExchange { peers: Vec<PeerAddr> },
    /// The CRL number I hold.
    CrlAnnounce { number: u64 },
    /// Send me your CRL if it is at least this number.
    CrlRequest { number: u64 },
    /// A signed CRL (DER).
    CrlData { der: Vec<u8> },
    /// A signed control envelope (genesis_trust::SignedEnvelope wire form) flooded through the
    /// mesh; `origin` is the member that injected it, where acknowledgements go.
    Control { origin: String, envelope: Vec<u8> },
    /// Unicast data, forwarded hop by hop.
    Data(Data),
    /// Flooded data (broadcast and topics), duplicate-suppressed by (src, id).
    Broadcast(Broadcast),
    /// A goodbye with a reason, before a link is closed on purpose.
    Close { reason: String },
    /// My renewed leaf certificate (DER): the link is re-checked against it from now on, so a
    /// rotation never drops a healthy link when the handshake certificate expires.
    Certificate { der: Vec<u8> },
    /// A targeted member's answer to a control message, routed back to its origin.
    ControlAck(ControlAck),
}

/// An acknowledgement of a control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlAck {
    /// The member that injected the control message.
    pub origin: String,
    /// The envelope id.
    pub id: String,
    /// Who answers.
    pub node: String,
    /// Whether it applied the verb.
    pub applied: bool,
    /// The RBAC rule that allowed it, or why applying failed.
    pub detail: String,
    pub ttl: u8,
}

/// One route in a route update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAdvert {
    /// Destination node name.
    pub dest: String,
    /// The destination's sequence number.
    pub seqno: u32,
    /// Cost from the sender to the destination; [`METRIC_INFINITY`] withdraws the route.
    pub metric: u16,
    /// Hops from the sender to the destination.
    pub hops: u8,
    /// The destination's signature over (network, dest, seqno): nobody else can make a fresher
    /// sequence number for it.
    pub proof: Vec<u8>,
    /// The destination's leaf certificate (DER), to check `proof` with.
    pub cert: Vec<u8>,
}

/// A member address for discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub node: String,
    pub addr: String,
    /// Its zone, as it named it in its hello (empty: not known).
    pub zone: String,
}

/// What a data frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// Opens an end-to-end stream (payload: service byte, destination port (u16), then the first
    /// bytes of the end-to-end TLS handshake).
    StreamOpen = 1,
    /// End-to-end TLS records of an open stream.
    StreamData = 2,
    /// The sender closed the stream.
    StreamClose = 3,
    /// A relay or the destination could not deliver (payload: reason text).
    Unreachable = 4,
}

impl DataKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => DataKind::StreamOpen,
            2 => DataKind::StreamData,
            3 => DataKind::StreamClose,
            4 => DataKind::Unreachable,
            _ => return None,
        })
    }
}

/// Unicast data.
#[derive(Clone, PartialEq, Eq)]
pub struct Data {
    pub src: String,
    pub dst: String,
    /// Hops left; a relay decrements it and drops the frame at zero.
    pub ttl: u8,
    pub kind: DataKind,
    /// Stream or channel id, chosen by the stream's opener.
    pub flow: u64,
    /// Shared with the buffer the frame was read into: delivering or relaying it copies
    /// nothing.
    pub payload: Bytes,
}

impl Data {
    /// The encoded frame as a head (header and addressing, a small allocation) and the payload
    /// itself, shared: what a link writer sends, with one vectored write for both.
    pub fn encode_parts(&self) -> Encoded {
        let mut counter = Writer(Counter(0));
        self.write_head(&mut counter);
        let body = counter.0 .0 + self.payload.len();
        let mut head = Vec::with_capacity(HEADER_LEN + counter.0 .0);
        head.extend_from_slice(&((body + 2) as u32).to_be_bytes());
        head.push(PROTOCOL_VERSION);
        head.push(FrameType::Data as u8);
        self.write_head(&mut Writer(&mut head));
        Encoded { head: Bytes::from(head), payload: self.payload.clone() }
    }

    /// The body up to the payload: addressing, then the payload's length.
    fn write_head<S: Sink>(&self, w: &mut Writer<S>) {
        assert!(self.payload.len() <= MAX_DATA_PAYLOAD, "field over its bound");
        w.str(&self.src, MAX_NAME);
        w.str(&self.dst, MAX_NAME);
        w.u8(self.ttl);
        w.u8(self.kind as u8);
        w.u64(self.flow);
        w.u32(self.payload.len() as u32);
    }
}

/// One encoded frame queued for a link writer: `head` then `payload` on the wire. Only data
/// frames have a separate payload; it is the very buffer the frame arrived in when relayed.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    pub head: Bytes,
    pub payload: Bytes,
}

impl Encoded {
    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.payload.len()
    }

    /// Whether nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.head.is_empty() && self.payload.is_empty()
    }

    /// Drops the first `n` written bytes.
    pub fn advance(&mut self, n: usize) {
        let from_head = n.min(self.head.len());
        self.head.advance(from_head);
        self.payload.advance(n - from_head);
    }
}

impl From<Vec<u8>> for Encoded {
    fn from(v: Vec<u8>) -> Self {
        Encoded { head: Bytes::from(v), payload: Bytes::new() }
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Data")
            .field("src", &self.src)
            .field("dst", &self.dst)
            .field("ttl", &self.ttl)
            .field("kind", &self.kind)
            .field("flow", &self.flow)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Flooded data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    pub src: String,
    /// Unique per source; with `src`, the duplicate-suppression key.
    pub id: u64,
    pub ttl: u8,
    /// Empty for a plain broadcast; otherwise only subscribers of the topic deliver it.
    pub topic: String,
    pub payload: Vec<u8>,
    /// The source's leaf certificate (DER) and its signature over network, source, id, topic
    /// and payload (`genesis_trust::broadcast`): relays pass both on unchanged, and every
    /// receiver checks them before it delivers or relays the message.
    pub cert: Vec<u8>,
    pub sig: Vec<u8>,
}

/// The frame type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 1,
    Ping = 2,
    Pong = 3,
    RouteUpdate = 4,
    SeqnoRequest = 5,
    PeerExchange = 6,
    CrlAnnounce = 7,
    CrlRequest = 8,
    CrlData = 9,
    Control = 10,
    Data = 11,
    Broadcast = 12,
    Close = 13,
    Certificate = 14,
    ControlAck = 15,
}

impl FrameType {
    /// All frame types.
    pub const ALL: [FrameType; 15] = [
        FrameType::Hello,
        FrameType::Ping,
        FrameType::Pong,
        FrameType::RouteUpdate,
        FrameType::SeqnoRequest,
        FrameType::PeerExchange,
        FrameType::CrlAnnounce,
        FrameType::CrlRequest,
        FrameType::CrlData,
        FrameType::Control,
        FrameType::Data,
        FrameType::Broadcast,
        FrameType::Close,
        FrameType::Certificate,
        FrameType::ControlAck,
    ];

    fn from_u8(v: u8) -> Option<Self> {
        FrameType::ALL.into_iter().find(|t| *t as u8 == v)
    }

    /// Label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameType::Hello => "hello",
            FrameType::Ping => "ping",
            FrameType::Pong => "pong",
            FrameType::RouteUpdate => "route_update",
            FrameType::SeqnoRequest => "seqno_request",
            FrameType::PeerExchange => "peer_exchange",
            FrameType::CrlAnnounce => "crl_announce",
            FrameType::CrlRequest => "crl_request",
            FrameType::CrlData => "crl_data",
            FrameType::Control => "control",
            FrameType::Data => "data",
            FrameType::Broadcast => "broadcast",
            FrameType::Close => "close",
            FrameType::Certificate => "certificate",
            FrameType::ControlAck => "control_ack",
        }
    }

    /// Largest body this type may have.
    pub fn max_body(self) -> usize {
        match self {
            FrameType::CrlData => MAX_CRL_BODY,
            _ => MAX_BODY,
        }
    }
}

/// Why bytes were not a valid frame. Any of these closes the link and costs the peer reputation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported frame protocol version {0} (this sidecar speaks {PROTOCOL_VERSION})")]
    Version(u8),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("{kind} frame of {len} bytes exceeds its {max}-byte limit")]
    TooLarge { kind: &'static str, len: usize, max: usize },
    #[error("frame length {0} is shorter than the frame header")]
    TooShort(usize),
    #[error("malformed {kind} frame: {reason}")]
    Malformed { kind: &'static str, reason: String },
}

impl FrameError {
    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::Version(_) => "version",
            FrameError::UnknownType(_) => "unknown_type",
            FrameError::TooLarge { .. } => "too_large",
            FrameError::TooShort(_) => "too_short",
            FrameError::Malformed { .. } => "malformed",
        }
    }
}

impl Frame {
    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello { .. } => FrameType::Hello,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::Pong { .. } => FrameType::Pong,
            Frame::RouteUpdate { .. } => FrameType::RouteUpdate,
            Frame::SeqnoRequest { .. } => FrameType::SeqnoRequest,
            Frame::PeerExchange { .. } => FrameType::PeerExchange,
            Frame::CrlAnnounce { .. } => FrameType::CrlAnnounce,
            Frame::CrlRequest { .. } => FrameType::CrlRequest,
            Frame::CrlData { .. } => FrameType::CrlData,
            Frame::Control { .. } => FrameType::Control,
            Frame::Data(_) => FrameType::Data,
            Frame::Broadcast(_) => FrameType::Broadcast,
            Frame::Close { .. } => FrameType::Close,
            Frame::Certificate { .. } => FrameType::Certificate,
            Frame::ControlAck(_) => FrameType::ControlAck,
        }
    }

    /// Encodes the frame with its header. Panics only if a field exceeds its bound, which is a
    /// bug in the caller (frames are built from validated state).
    pub fn encode(&self) -> Vec<u8> {
        let body = self.body_len();
        let mut out = Vec::with_capacity(HEADER_LEN + body);
        out.extend_from_slice(&((body + 2) as u32).to_be_bytes());
        out.push(PROTOCOL_VERSION);
        out.push(self.frame_type() as u8);
        self.write_body(&mut Writer(&mut out));
        out
    }

    /// The length of [`Frame::encode`]'s bytes, without making them (the simulator counts
    /// every frame's size).
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    fn body_len(&self) -> usize {
        let mut w = Writer(Counter(0));
        self.write_body(&mut w);
        w.0 .0
    }

    fn write_body<S: Sink>(&self, w: &mut Writer<S>) {
        match self {
            Frame::Hello { identity, listen, zone } => {
                w.str(identity, MAX_URI);
                w.str(listen, MAX_ADDR);
                w.str(zone, MAX_ZONE);
            }
            Frame::Ping { nonce } | Frame::Pong { nonce } => w.u64(*nonce),
            Frame::RouteUpdate { adverts } => {
                assert!(adverts.len() <= MAX_ADVERTS, "too many adverts in one update");
                w.u8(adverts.len() as u8);
                for a in adverts {
                    w.str(&a.dest, MAX_NAME);
                    w.u32(a.seqno);
                    w.u16(a.metric);
                    w.u8(a.hops);
                    w.bytes(&a.proof, MAX_SIG);
                    w.bytes(&a.cert, MAX_CERT);
                }
            }
            Frame::SeqnoRequest { dest, seqno, hops_left } => {
                w.str(dest, MAX_NAME);
                w.u32(*seqno);
                w.u8(*hops_left);
            }
            Frame::PeerExchange { peers } => {
                assert!(peers.len() <= MAX_PEER_ADDRS, "too many peers in one exchange");
                w.u8(peers.len() as u8);
                for p in peers {
                    w.str(&p.node, MAX_NAME);
                    w.str(&p.addr, MAX_ADDR);
                    w.str(&p.zone, MAX_ZONE);
                }
            }
            Frame::CrlAnnounce { number } | Frame::CrlRequest { number } => w.u64(*number),
            Frame::CrlData { der } => w.long_bytes(der, MAX_CRL_BODY - 4),
            Frame::Control { origin, envelope } => {
                w.str(origin, MAX_NAME);
                w.long_bytes(envelope, MAX_BODY - 4 - 2 - MAX_NAME);
            }
            Frame::Data(d) => {
                d.write_head(w);
                w.0.put(&d.payload);
            }
            Frame::Broadcast(b) => {
                w.str(&b.src, MAX_NAME);
                w.u64(b.id);
                w.u8(b.ttl);
                w.str(&b.topic, MAX_TOPIC);
                w.long_bytes(&b.payload, MAX_DATA_PAYLOAD);
                w.bytes(&b.cert, MAX_CERT);
                w.bytes(&b.sig, MAX_SIG);
            }
            Frame::Close { reason } => w.str(truncate(reason, MAX_REASON), MAX_REASON),
            Frame::Certificate { der } => w.bytes(der, MAX_CERT),
            Frame::ControlAck(a) => {
                w.str(&a.origin, MAX_NAME);
                w.str(&a.id, MAX_ACK_ID);
                w.str(&a.node, MAX_NAME);
                w.u8(u8::from(a.applied));
                w.str(truncate(&a.detail, MAX_REASON), MAX_REASON);
                w.u8(a.ttl);
            }
        }
    }

    /// Decodes one frame body of type `ty` (the header already checked).
    fn decode_body(ty: FrameType, body: &[u8]) -> Result<Frame, FrameError> {
        let kind = ty.as_str();
        let mut r = Reader { buf: body, kind };
        let frame = match ty {
            FrameType::Hello => Frame::Hello {
                identity: r.str(MAX_URI)?,
                listen: r.str(MAX_ADDR)?,
                zone: r.str(MAX_ZONE)?,
            },
            FrameType::Ping => Frame::Ping { nonce: r.u64()? },
            FrameType::Pong => Frame::Pong { nonce: r.u64()? },
            FrameType::RouteUpdate => {
                let n = r.u8()? as usize;
                if n > MAX_ADVERTS {
                    return Err(r.err(format!("{n} adverts (at most {MAX_ADVERTS})")));
                }
                let mut adverts = Vec::with_capacity(n);
                for _ in 0..n {
                    adverts.push(RouteAdvert {
                        dest: r.name()?,
                        seqno: r.u32()?,
                        metric: r.u16()?,
                        hops: r.u8()?,
                        proof: r.bytes(MAX_SIG)?,
                        cert: r.bytes(MAX_CERT)?,
                    });
                }
                Frame::RouteUpdate { adverts }
            }
            FrameType::SeqnoRequest => {
                Frame::SeqnoRequest { dest: r.name()?, seqno: r.u32()?, hops_left: r.u8()? }
            }
            FrameType::PeerExchange => {
                let n = r.u8()? as usize;
                if n > MAX_PEER_ADDRS {
                    return Err(r.err(format!("{n} peers (at most {MAX_PEER_ADDRS})")));
                }
                let mut peers = Vec::with_capacity(n);
                for _ in 0..n {
                    peers.push(PeerAddr {
                        node: r.name()?,
                        addr: r.str(MAX_ADDR)?,
                        zone: r.str(MAX_ZONE)?,
                    });
                }
                Frame::PeerExchange { peers }
            }
            FrameType::CrlAnnounce => Frame::CrlAnnounce { number: r.u64()? },
            FrameType::CrlRequest => Frame::CrlRequest { number: r.u64()? },
            FrameType::CrlData => Frame::CrlData { der: r.long_bytes(MAX_CRL_BODY - 4)? },
            FrameType::Control => Frame::Control {
                origin: r.name()?,
                envelope: r.long_bytes(MAX_BODY - 4 - 2 - MAX_NAME)?,
            },
            FrameType::Data => return Frame::decode_data(Bytes::copy_from_slice(body)),
            FrameType::Broadcast => Frame::Broadcast(Broadcast {
                src: r.name()?,
                id: r.u64()?,
                ttl: r.u8()?,
                topic: r.str(MAX_TOPIC)?,
                payload: r.long_bytes(MAX_DATA_PAYLOAD)?,
                cert: r.bytes(MAX_CERT)?,
                sig: r.bytes(MAX_SIG)?,
            }),
            FrameType::Close => Frame::Close { reason: r.str(MAX_REASON)? },
            FrameType::Certificate => Frame::Certificate { der: r.bytes(MAX_CERT)? },
            FrameType::ControlAck => Frame::ControlAck(ControlAck {
                origin: r.name()?,
                id: r.str(MAX_ACK_ID)?,
                node: r.name()?,
                applied: match r.u8()? {
                    0 => false,
                    1 => true,
                    v => return Err(r.err(format!("applied flag {v} is neither 0 nor 1"))),
                },
                detail: r.str(MAX_REASON)?,
                ttl: r.u8()?,
            }),
        };
        if !r.buf.is_empty() {
            return Err(r.err(format!("{} trailing bytes", r.buf.len())));
        }
        Ok(frame)
    }
}

impl Frame {
    /// Decodes a data frame's body; its payload is a slice of `body`.
    fn decode_data(body: Bytes) -> Result<Frame, FrameError> {
        let mut r = Reader { buf: &body, kind: FrameType::Data.as_str() };
        let src = r.name()?;
        let dst = r.name()?;
        let ttl = r.u8()?;
        let kind_byte = r.u8()?;
        let kind = DataKind::from_u8(kind_byte)
            .ok_or_else(|| r.err(format!("unknown data kind {kind_byte}")))?;
        let flow = r.u64()?;
        let n = r.u32()? as usize;
        if n > MAX_DATA_PAYLOAD {
            return Err(r.err(format!("payload of {n} bytes exceeds {MAX_DATA_PAYLOAD}")));
        }
        r.take(n)?;
        if !r.buf.is_empty() {
            return Err(r.err(format!("{} trailing bytes", r.buf.len())));
        }
        let end = body.len();
        let payload = body.slice(end - n..end);
        Ok(Frame::Data(Data { src, dst, ttl, kind, flow, payload }))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decodes frames from a byte stream. Bytes are read straight into its buffer
/// ([`FrameDecoder::read_buf`]); a data frame's payload is handed out as a shared slice of
/// that buffer, never copied.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    last_len: usize,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        FrameDecoder::default()
    }

    /// Appends bytes read from the link.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read the link into, with room for at least `room` more bytes. An empty
    /// buffer larger than that (grown by a burst, or the tail of an allocation whose frames
    /// are still on their way) is let go first: an idle link holds `room` bytes, not its
    /// largest burst.
    pub fn read_buf(&mut self, room: usize) -> &mut BytesMut {
        if self.buf.is_empty() && self.buf.capacity() > room {
            self.buf = BytesMut::new();
        }
        self.buf.reserve(room);
        &mut self.buf
    }

    /// Wire size of the frame `next_frame` returned last.
    pub fn last_frame_len(&self) -> usize {
        self.last_len
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the reason the stream
    /// is not a valid frame stream (after which the link must be closed).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        let version = self.buf[4];
        if version != PROTOCOL_VERSION {
            return Err(FrameError::Version(version));
        }
        let ty = FrameType::from_u8(self.buf[5]).ok_or(FrameError::UnknownType(self.buf[5]))?;
        if len < 2 {
            return Err(FrameError::TooShort(len));
        }
        let body_len = len - 2;
        if body_len > ty.max_body() {
            return Err(FrameError::TooLarge {
                kind: ty.as_str(),
                len: body_len,
                max: ty.max_body(),
            });
        }
        if self.buf.len() < HEADER_LEN + body_len {
            return Ok(None);
        }
        self.last_len = HEADER_LEN + body_len;
        let frame = if ty == FrameType::Data {
            // The frame leaves the buffer as its own shared slice; the payload stays in it.
            let raw = self.buf.split_to(HEADER_LEN + body_len).freeze();
            Frame::decode_data(raw.slice(HEADER_LEN..))
        } else {
            let frame = Frame::decode_body(ty, &self.buf[HEADER_LEN..HEADER_LEN + body_len]);
            self.buf.advance(HEADER_LEN + body_len);
            frame
        };
        frame.map(Some)
    }
}

/// Where a [`Writer`] puts bytes: a buffer, or a [`Counter`] of them.
trait Sink {
    fn put(&mut self, b: &[u8]);
}

impl Sink for &mut Vec<u8> {
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

/// Counts the bytes put, keeping none.
struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, b: &[u8]) {
        self.0 += b.len();
    }
}

struct Writer<S>(S);

impl<S: Sink> Writer<S> {
    fn u8(&mut self, v: u8) {
        self.0.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.0.put(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.put(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.put(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8], max: usize) {
        assert!(b.len() <= max && max <= u16::MAX as usize, "field over its bound");
        self.u16(b.len() as u16);
        self.0.put(b);
    }
    fn long_bytes(&mut self, b: &[u8], max: usize) {
        assert!(b.len() <= max, "field over its bound");
        self.u32(b.len() as u32);
        self.0.put(b);
    }
    fn str(&mut self, s: &str, max: usize) {
        self.bytes(s.as_bytes(), max);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: String) -> FrameError {
        FrameError::Malformed { kind: self.kind, reason }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(self.err(format!("truncated: need {n} bytes, {} left", self.buf.len())));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self, max: usize) -> Result<Vec<u8>, FrameError> {
        let n = self.u16()? as usize;
        if n > max {
            return Err(self.err(format!("field of {n} bytes exceeds {max}")));
        }
        Ok(self.take(n)?.to_vec())
    }
    fn long_bytes(&mut self, max: usize) -> Result<Vec<u8>, FrameError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(self.err(format!("payload of {n} bytes exceeds {max}")));
        }
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self, max: usize) -> Result<String, FrameError> {
        let b = self.bytes(max)?;
        String::from_utf8(b).map_err(|_| self.err("string is not UTF-8".into()))
    }
    /// A node name: non-empty, at most 253 bytes, lowercase DNS characters only.
    fn name(&mut self) -> Result<String, FrameError> {
        let s = self.str(MAX_NAME)?;
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(self.err(format!("invalid node name {:?}", truncate(&s, 64))));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests;
