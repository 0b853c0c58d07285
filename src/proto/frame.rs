//! `com.atproto.sync.subscribeRepos` frames: a header item and a body item, both canonical
//! DAG-CBOR, decoded into typed events and encoded back canonically.
//!
//! Decoding is two passes on purpose. The first validates the whole frame as strict CBOR; a
//! failure there means the *connection* is broken (the spec says drop it). The second reads the
//! typed fields; a failure there (missing field, wrong type) costs only that frame. Keeping the
//! two apart means the caller never has to guess which kind of error it got.
//!
//! `blocks` stay as slices of the received frame (`Bytes`), so forwarding a commit copies its CAR
//! once, into the outgoing frame.

use crate::proto::cbor::{CborError, Kind, MAX_DEPTH, MapKeys, Reader, Writer};
use crate::proto::cid::Cid;
use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not two canonical CBOR items: the connection must be dropped.
    #[error("frame is not valid DAG-CBOR: {0}")]
    Cbor(#[from] CborError),
    /// The header map is unusable (no integer `op`, or `op=1` without `t`): connection-fatal too.
    #[error("frame header is invalid: {0}")]
    Header(&'static str),
    /// The body does not match the lexicon: the frame is dropped, the connection kept.
    #[error("{t} body is invalid: {why}")]
    Schema { t: &'static str, why: String },
}

impl FrameError {
    /// Whether the connection that produced this frame must be closed.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::Schema { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoOp {
    pub action: String,
    pub path: String,
    pub cid: Option<Cid>,
    pub prev: Option<Cid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitEvent {
    pub seq: i64,
    pub rebase: bool,
    pub too_big: bool,
    pub repo: String,
    pub commit: Cid,
    pub rev: String,
    pub since: Option<String>,
    pub blocks: Bytes,
    pub ops: Vec<RepoOp>,
    pub blobs: Vec<Cid>,
    pub prev_data: Option<Cid>,
    pub time: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncEvent {
    pub seq: i64,
    pub did: String,
    pub blocks: Bytes,
    pub rev: String,
    pub time: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityEvent {
    pub seq: i64,
    pub did: String,
    pub time: String,
    pub handle: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountEvent {
    pub seq: i64,
    pub did: String,
    pub time: String,
    pub active: bool,
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoEvent {
    pub name: String,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    pub error: String,
    pub message: Option<String>,
}

// Boxing `Commit` would trade a few hundred bytes of enum size for an allocation per event;
// events are moved, not copied, so the size does not matter here.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Commit(CommitEvent),
    Sync(SyncEvent),
    Identity(IdentityEvent),
    Account(AccountEvent),
    Info(InfoEvent),
    Error(ErrorFrame),
    /// A well-formed frame of a type or op we do not handle (including the deprecated
    /// `#handle`, `#migrate`, `#tombstone`); callers skip it.
    Unknown {
        op: i64,
        t: Option<String>,
    },
}

impl Event {
    /// The stream sequence number, for the persisted types.
    pub fn seq(&self) -> Option<i64> {
        match self {
            Event::Commit(e) => Some(e.seq),
            Event::Sync(e) => Some(e.seq),
            Event::Identity(e) => Some(e.seq),
            Event::Account(e) => Some(e.seq),
            _ => None,
        }
    }

    pub fn set_seq(&mut self, seq: i64) {
        match self {
            Event::Commit(e) => e.seq = seq,
            Event::Sync(e) => e.seq = seq,
            Event::Identity(e) => e.seq = seq,
            Event::Account(e) => e.seq = seq,
            _ => {}
        }
    }

    /// The account the event is about.
    pub fn did(&self) -> Option<&str> {
        match self {
            Event::Commit(e) => Some(&e.repo),
            Event::Sync(e) => Some(&e.did),
            Event::Identity(e) => Some(&e.did),
            Event::Account(e) => Some(&e.did),
            _ => None,
        }
    }

    /// The header `t` value.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Commit(_) => "#commit",
            Event::Sync(_) => "#sync",
            Event::Identity(_) => "#identity",
            Event::Account(_) => "#account",
            Event::Info(_) => "#info",
            Event::Error(_) => "error",
            Event::Unknown { .. } => "unknown",
        }
    }
}

/// Canonical header bytes for each message type (`{t, op: 1}`; `t` sorts before `op`).
fn header_bytes(t: &str) -> Vec<u8> {
    let mut w = Writer::with_capacity(16);
    w.map(2).str("t").str(t).str("op").i64(1);
    w.into_bytes()
}

/// Checks that the frame is exactly two strictly canonical items (an error here is
/// connection-fatal) and reads its header: `(op, t, body start)`.
fn split(frame: &[u8]) -> Result<(i64, Option<&str>, usize), FrameError> {
    // Pass 1: exactly two strictly canonical items.
    let mut r = Reader::new(frame);
    r.skip(MAX_DEPTH)?;
    let body_start = r.position();
    if r.is_at_end() {
        return Err(FrameError::Header("frame has no body"));
    }
    r.skip(MAX_DEPTH)?;
    r.finish()?;

    // Pass 2: typed.
    let (op, t, _) = typed_header(&frame[..body_start])?;
    Ok((op, t, body_start))
}

/// The header's `op` and `t`, and where the body starts.
fn typed_header(frame: &[u8]) -> Result<(i64, Option<&str>, usize), FrameError> {
    let mut h = Reader::new(frame);
    let (op, t) = read_header(&mut h).map_err(|_| FrameError::Header("header is not a map"))?;
    let op = op.ok_or(FrameError::Header("header has no integer `op`"))?;
    if op == 1 && t.is_none() {
        return Err(FrameError::Header("message header has no `t`"));
    }
    Ok((op, t, h.position()))
}

/// What a host thread learns of a frame before handing it on, without allocating.
#[derive(Debug, PartialEq, Eq)]
pub enum Peek<'a> {
    /// `#commit`, `#sync`, `#identity` or `#account`, with the body's `seq` and DID if they are
    /// there with the right types (the full check is `decode`'s).
    Repo {
        seq: Option<i64>,
        did: Option<&'a str>,
    },
    /// Anything else (`#info`, errors, unknown types): rare, decode it at once.
    Other,
}

/// Checks the frame as strictly as `decode` does for connection-fatal errors, and finds what
/// ordering needs (the upstream seq and the DID) while leaving the body to `decode`. Lets the
/// thousands of host threads pass frames on without building events (see
/// `ingest::validators`).
pub fn peek(frame: &[u8]) -> Result<Peek<'_>, FrameError> {
    let (op, t, body_start) = split(frame)?;
    let did_key = match (op, t) {
        (1, Some("#commit")) => "repo",
        (1, Some("#sync" | "#identity" | "#account")) => "did",
        _ => return Ok(Peek::Other),
    };
    let (mut seq, mut did) = (None, None);
    let mut r = Reader::new(&frame[body_start..]);
    // The body was checked in `split`; a body that is not a map is `decode`'s schema error.
    if let Ok(mut keys) = r.map() {
        while let Ok(Some(k)) = keys.next(&mut r) {
            let kind = r.peek_kind();
            let read = match k {
                "seq" if matches!(kind, Ok(Kind::Unsigned | Kind::Negative)) => {
                    r.i64().map(|v| seq = Some(v))
                }
                k if k == did_key && kind == Ok(Kind::Text) => r.str().map(|v| did = Some(v)),
                _ => r.skip(MAX_DEPTH),
            };
            if read.is_err() || (seq.is_some() && did.is_some()) {
                break;
            }
        }
    }
    Ok(Peek::Repo { seq, did })
}

/// Decodes one binary WebSocket frame.
pub fn decode(frame: &Bytes) -> Result<Event, FrameError> {
    let (op, t, body_start) = split(frame)?;
    decode_body(frame, op, t, body_start)
}

/// A sequenced frame read for Jetstream: a `#commit` in place, anything else decoded.
#[derive(Debug)]
pub enum Sequenced<'a> {
    Commit(CommitRef<'a>),
    Other(Event),
}

/// Reads a frame the relay sequenced (from its ring or disk log), for Jetstream: the typed
/// reading of [`decode`] without its first pass over the whole frame, which checks canonical
/// form the relay already checked when the frame arrived (and kept when it re-encoded it). That
/// pass was a fifth of turning an event into Jetstream JSON. A `#commit` is left borrowed from
/// the frame. Still bounds-checked throughout: a damaged log record is an error, never a panic.
pub fn read_sequenced(frame: &Bytes) -> Result<Sequenced<'_>, FrameError> {
    let (op, t, body_start) = typed_header(frame)?;
    match (op, t, frame.get(body_start..)) {
        (_, _, None | Some([])) => Err(FrameError::Header("frame has no body")),
        (1, Some("#commit"), Some(body)) => read_commit(body)
            .map(Sequenced::Commit)
            .map_err(|why| FrameError::Schema { t: "#commit", why }),
        _ => decode_body(frame, op, t, body_start).map(Sequenced::Other),
    }
}

fn decode_body(
    frame: &Bytes,
    op: i64,
    t: Option<&str>,
    body_start: usize,
) -> Result<Event, FrameError> {
    let body = &frame[body_start..];
    match op {
        1 => {
            let t = t.unwrap_or_default();
            let schema = |t: &'static str| move |why: String| FrameError::Schema { t, why };
            match t {
                "#commit" => read_commit(body)
                    .and_then(|c| c.to_event(frame))
                    .map(Event::Commit)
                    .map_err(schema("#commit")),
                "#sync" => read_sync(frame, body)
                    .map(Event::Sync)
                    .map_err(schema("#sync")),
                "#identity" => read_identity(body)
                    .map(Event::Identity)
                    .map_err(schema("#identity")),
                "#account" => read_account(body)
                    .map(Event::Account)
                    .map_err(schema("#account")),
                "#info" => read_info(body).map(Event::Info).map_err(schema("#info")),
                other => Ok(Event::Unknown {
                    op,
                    t: Some(other.to_owned()),
                }),
            }
        }
        -1 => read_error(body)
            .map(Event::Error)
            .map_err(|why| FrameError::Schema { t: "error", why }),
        _ => Ok(Event::Unknown {
            op,
            t: t.map(str::to_owned),
        }),
    }
}

fn read_header<'a>(r: &mut Reader<'a>) -> Result<(Option<i64>, Option<&'a str>), CborError> {
    let mut keys = r.map()?;
    let (mut op, mut t) = (None, None);
    while let Some(k) = keys.next(r)? {
        match k {
            "op" if matches!(r.peek_kind(), Ok(Kind::Unsigned | Kind::Negative)) => {
                op = Some(r.i64()?)
            }
            "t" if r.peek_kind() == Ok(Kind::Text) => t = Some(r.str()?),
            _ => r.skip(MAX_DEPTH)?,
        }
    }
    Ok((op, t))
}

/// Typed field reading; every error here is a schema error (the CBOR was already validated).
struct Body<'a> {
    r: Reader<'a>,
    keys: MapKeys<'a>,
}

type SResult<T> = Result<T, String>;

fn field<T>(name: &str, v: Result<T, CborError>) -> SResult<T> {
    v.map_err(|e| format!("field `{name}`: {e}"))
}

fn need<T>(name: &str, v: Option<T>) -> SResult<T> {
    v.ok_or_else(|| format!("missing required field `{name}`"))
}

impl<'a> Body<'a> {
    fn new(body: &'a [u8]) -> SResult<Body<'a>> {
        let mut r = Reader::new(body);
        let keys = r.map().map_err(|e| format!("body is not a map: {e}"))?;
        Ok(Body { r, keys })
    }

    fn next(&mut self) -> SResult<Option<&'a str>> {
        self.keys.next(&mut self.r).map_err(|e| e.to_string())
    }

    fn skip(&mut self) -> SResult<()> {
        self.r.skip(MAX_DEPTH).map_err(|e| e.to_string())
    }

    fn string(&mut self, name: &str) -> SResult<String> {
        self.str(name).map(str::to_owned)
    }

    fn str(&mut self, name: &str) -> SResult<&'a str> {
        field(name, self.r.str())
    }

    /// Optional string that tolerates an explicit null as "absent".
    fn opt_string(&mut self, name: &str) -> SResult<Option<String>> {
        field(name, self.r.nullable_str()).map(|s| s.map(str::to_owned))
    }
}

/// A `#commit` body read in place: its strings and blocks borrowed from the frame, its ops and
/// blobs left as (well-formed) CBOR until asked for, when their schema is checked. `decode`
/// makes the owned [`CommitEvent`] from it; Jetstream renders straight from it, without an
/// allocation per field (allocating and freeing those was a tenth of its encoding).
#[derive(Debug)]
pub struct CommitRef<'a> {
    pub seq: i64,
    pub rebase: bool,
    pub too_big: bool,
    pub repo: &'a str,
    pub commit: Cid,
    pub rev: &'a str,
    pub since: Option<&'a str>,
    pub blocks: &'a [u8],
    ops: Items<'a>,
    blobs: Items<'a>,
    pub prev_data: Option<Cid>,
    pub time: &'a str,
}

/// An array's items, validated, as the bytes after its head.
#[derive(Debug, Clone, Copy)]
struct Items<'a> {
    bytes: &'a [u8],
    n: usize,
}

impl<'a> Items<'a> {
    /// Reads an array's head and skips (validates) its items.
    fn read(r: &mut Reader<'a>, name: &str) -> SResult<Items<'a>> {
        let n = field(name, r.array())?;
        let from = r.position();
        for _ in 0..n {
            field(name, r.skip(MAX_DEPTH))?;
        }
        let bytes = r.input().get(from..r.position()).unwrap_or_default();
        Ok(Items { bytes, n })
    }

    fn each<T>(
        self,
        read: impl Fn(&mut Reader<'a>) -> SResult<T>,
    ) -> impl Iterator<Item = SResult<T>> {
        let mut r = Reader::new(self.bytes);
        (0..self.n).map(move |_| read(&mut r))
    }
}

/// One op of a [`CommitRef`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpRef<'a> {
    pub action: &'a str,
    pub path: &'a str,
    pub cid: Option<Cid>,
    pub prev: Option<Cid>,
}

impl<'a> CommitRef<'a> {
    pub fn ops(&self) -> impl Iterator<Item = SResult<OpRef<'a>>> + use<'a> {
        self.ops.each(read_op)
    }

    /// How many ops there are (bounded by the frame's length, as every CBOR count is).
    pub fn op_count(&self) -> usize {
        self.ops.n
    }

    /// The owned event; `frame` is the buffer the borrowed fields point into.
    pub fn to_event(&self, frame: &Bytes) -> SResult<CommitEvent> {
        Ok(CommitEvent {
            seq: self.seq,
            rebase: self.rebase,
            too_big: self.too_big,
            repo: self.repo.to_owned(),
            commit: self.commit,
            rev: self.rev.to_owned(),
            since: self.since.map(str::to_owned),
            blocks: frame.slice_ref(self.blocks),
            ops: self
                .ops()
                .map(|o| {
                    o.map(|o| RepoOp {
                        action: o.action.to_owned(),
                        path: o.path.to_owned(),
                        cid: o.cid,
                        prev: o.prev,
                    })
                })
                .collect::<SResult<_>>()?,
            blobs: self
                .blobs
                .each(|r| field("blobs", r.cid()))
                .collect::<SResult<_>>()?,
            prev_data: self.prev_data,
            time: self.time.to_owned(),
        })
    }
}

fn read_commit(body: &[u8]) -> SResult<CommitRef<'_>> {
    let mut b = Body::new(body)?;
    let (mut seq, mut rebase, mut too_big, mut repo, mut commit, mut rev) =
        (None, None, None, None, None, None);
    let (mut since, mut since_seen, mut blocks, mut ops, mut blobs, mut prev_data, mut time) =
        (None, false, None, None, None, None, None);
    while let Some(k) = b.next()? {
        match k {
            "ops" => ops = Some(Items::read(&mut b.r, k)?),
            "rev" => rev = Some(b.str(k)?),
            "seq" => seq = Some(field(k, b.r.i64())?),
            "repo" => repo = Some(b.str(k)?),
            "time" => time = Some(b.str(k)?),
            "blobs" => blobs = Some(Items::read(&mut b.r, k)?),
            "since" => {
                since = field(k, b.r.nullable_str())?;
                since_seen = true;
            }
            "blocks" => blocks = Some(field(k, b.r.bytes())?),
            "commit" => commit = Some(field(k, b.r.cid())?),
            "rebase" => rebase = Some(field(k, b.r.bool())?),
            "tooBig" => too_big = Some(field(k, b.r.bool())?),
            "prevData" => prev_data = Some(field(k, b.r.cid())?),
            _ => b.skip()?,
        }
    }
    if !since_seen {
        return Err("missing required field `since`".into());
    }
    Ok(CommitRef {
        seq: need("seq", seq)?,
        rebase: need("rebase", rebase)?,
        too_big: need("tooBig", too_big)?,
        repo: need("repo", repo)?,
        commit: need("commit", commit)?,
        rev: need("rev", rev)?,
        since,
        blocks: need("blocks", blocks)?,
        ops: need("ops", ops)?,
        blobs: need("blobs", blobs)?,
        prev_data,
        time: need("time", time)?,
    })
}

fn read_op<'a>(r: &mut Reader<'a>) -> SResult<OpRef<'a>> {
    let mut keys = field("ops", r.map())?;
    let (mut action, mut path, mut cid, mut cid_seen, mut prev) = (None, None, None, false, None);
    while let Some(k) = keys.next(r).map_err(|e| e.to_string())? {
        match k {
            "cid" => {
                cid = field("ops.cid", r.nullable_cid())?;
                cid_seen = true;
            }
            "path" => path = Some(field("ops.path", r.str())?),
            "prev" => prev = field("ops.prev", r.nullable_cid())?,
            "action" => action = Some(field("ops.action", r.str())?),
            _ => r.skip(MAX_DEPTH).map_err(|e| e.to_string())?,
        }
    }
    if !cid_seen {
        return Err("op is missing required field `cid`".into());
    }
    Ok(OpRef {
        action: need("ops.action", action)?,
        path: need("ops.path", path)?,
        cid,
        prev,
    })
}

fn read_sync(frame: &Bytes, body: &[u8]) -> SResult<SyncEvent> {
    let mut b = Body::new(body)?;
    let (mut seq, mut did, mut blocks, mut rev, mut time) = (None, None, None, None, None);
    while let Some(k) = b.next()? {
        match k {
            "did" => did = Some(b.string(k)?),
            "rev" => rev = Some(b.string(k)?),
            "seq" => seq = Some(field(k, b.r.i64())?),
            "time" => time = Some(b.string(k)?),
            "blocks" => blocks = Some(frame.slice_ref(field(k, b.r.bytes())?)),
            _ => b.skip()?,
        }
    }
    Ok(SyncEvent {
        seq: need("seq", seq)?,
        did: need("did", did)?,
        blocks: need("blocks", blocks)?,
        rev: need("rev", rev)?,
        time: need("time", time)?,
    })
}

fn read_identity(body: &[u8]) -> SResult<IdentityEvent> {
    let mut b = Body::new(body)?;
    let (mut seq, mut did, mut time, mut handle) = (None, None, None, None);
    while let Some(k) = b.next()? {
        match k {
            "did" => did = Some(b.string(k)?),
            "seq" => seq = Some(field(k, b.r.i64())?),
            "time" => time = Some(b.string(k)?),
            "handle" => handle = b.opt_string(k)?,
            _ => b.skip()?,
        }
    }
    Ok(IdentityEvent {
        seq: need("seq", seq)?,
        did: need("did", did)?,
        time: need("time", time)?,
        handle,
    })
}

fn read_account(body: &[u8]) -> SResult<AccountEvent> {
    let mut b = Body::new(body)?;
    let (mut seq, mut did, mut time, mut active, mut status) = (None, None, None, None, None);
    while let Some(k) = b.next()? {
        match k {
            "did" => did = Some(b.string(k)?),
            "seq" => seq = Some(field(k, b.r.i64())?),
            "time" => time = Some(b.string(k)?),
            "active" => active = Some(field(k, b.r.bool())?),
            "status" => status = b.opt_string(k)?,
            _ => b.skip()?,
        }
    }
    Ok(AccountEvent {
        seq: need("seq", seq)?,
        did: need("did", did)?,
        time: need("time", time)?,
        active: need("active", active)?,
        status,
    })
}

fn read_info(body: &[u8]) -> SResult<InfoEvent> {
    let mut b = Body::new(body)?;
    let (mut name, mut message) = (None, None);
    while let Some(k) = b.next()? {
        match k {
            "name" => name = Some(b.string(k)?),
            "message" => message = b.opt_string(k)?,
            _ => b.skip()?,
        }
    }
    Ok(InfoEvent {
        name: need("name", name)?,
        message,
    })
}

fn read_error(body: &[u8]) -> SResult<ErrorFrame> {
    let mut b = Body::new(body)?;
    let (mut error, mut message) = (None, None);
    while let Some(k) = b.next()? {
        match k {
            "error" => error = Some(b.string(k)?),
            "message" => message = b.opt_string(k)?,
            _ => b.skip()?,
        }
    }
    Ok(ErrorFrame {
        error: need("error", error)?,
        message,
    })
}

// ---- encoding (field order is canonical: by key length, then bytewise) ----

impl CommitEvent {
    fn encode_body(&self, w: &mut Writer, slot: bool) -> usize {
        w.map(11 + usize::from(self.prev_data.is_some()));
        w.str("ops").array(self.ops.len());
        for op in &self.ops {
            w.map(3 + usize::from(op.prev.is_some()));
            w.str("cid").nullable_cid(op.cid.as_ref());
            w.str("path").str(&op.path);
            if let Some(p) = &op.prev {
                w.str("prev").cid(p);
            }
            w.str("action").str(&op.action);
        }
        w.str("rev").str(&self.rev);
        let at = seq_field(w, self.seq, slot);
        w.str("repo").str(&self.repo);
        w.str("time").str(&self.time);
        w.str("blobs").array(self.blobs.len());
        for b in &self.blobs {
            w.cid(b);
        }
        w.str("since").nullable_str(self.since.as_deref());
        w.str("blocks").bytes(&self.blocks);
        w.str("commit").cid(&self.commit);
        w.str("rebase").bool(self.rebase);
        w.str("tooBig").bool(self.too_big);
        if let Some(p) = &self.prev_data {
            w.str("prevData").cid(p);
        }
        at
    }
}

impl SyncEvent {
    fn encode_body(&self, w: &mut Writer, slot: bool) -> usize {
        w.map(5);
        w.str("did").str(&self.did);
        w.str("rev").str(&self.rev);
        let at = seq_field(w, self.seq, slot);
        w.str("time").str(&self.time);
        w.str("blocks").bytes(&self.blocks);
        at
    }
}

impl IdentityEvent {
    fn encode_body(&self, w: &mut Writer, slot: bool) -> usize {
        w.map(3 + usize::from(self.handle.is_some()));
        w.str("did").str(&self.did);
        let at = seq_field(w, self.seq, slot);
        w.str("time").str(&self.time);
        if let Some(h) = &self.handle {
            w.str("handle").str(h);
        }
        at
    }
}

impl AccountEvent {
    fn encode_body(&self, w: &mut Writer, slot: bool) -> usize {
        w.map(4 + usize::from(self.status.is_some()));
        w.str("did").str(&self.did);
        let at = seq_field(w, self.seq, slot);
        w.str("time").str(&self.time);
        w.str("active").bool(self.active);
        if let Some(s) = &self.status {
            w.str("status").str(s);
        }
        at
    }
}

fn encode_name_message(w: &mut Writer, name_key: &str, name: &str, message: Option<&str>) {
    w.map(1 + usize::from(message.is_some()));
    w.str(name_key).str(name);
    if let Some(m) = message {
        w.str("message").str(m);
    }
}

/// The seq is the one field the sequencer fills in. In a slot encoding it is written as a
/// 9-byte placeholder (the widest CBOR integer head), which `Unsequenced::sequence` replaces by
/// the minimal form. Returns where the value starts.
fn seq_field(w: &mut Writer, seq: i64, slot: bool) -> usize {
    w.str("seq");
    let at = w.len();
    if slot {
        w.raw(&[0x1b, 0, 0, 0, 0, 0, 0, 0, 0]);
    } else {
        w.i64(seq);
    }
    at
}

/// Header + body, with the seq as given or as a slot; returns the bytes and the slot offset
/// (0 for types without a seq). `Unknown` events encode as nothing.
fn encode_frame(event: &Event, slot: bool) -> (Vec<u8>, usize) {
    let mut w = match event {
        Event::Error(_) => {
            let mut w = Writer::with_capacity(64);
            w.map(1).str("op").i64(-1);
            w
        }
        Event::Unknown { .. } => return (Vec::new(), 0),
        e => {
            let cap = match e {
                Event::Commit(c) => c.blocks.len() + 256 + c.ops.len() * 128,
                Event::Sync(s) => s.blocks.len() + 128,
                _ => 160,
            };
            let mut v = Vec::with_capacity(cap);
            v.extend_from_slice(&header_bytes(e.type_name()));
            Writer::from_vec(v)
        }
    };
    let at = match event {
        Event::Commit(e) => e.encode_body(&mut w, slot),
        Event::Sync(e) => e.encode_body(&mut w, slot),
        Event::Identity(e) => e.encode_body(&mut w, slot),
        Event::Account(e) => e.encode_body(&mut w, slot),
        Event::Info(e) => {
            encode_name_message(&mut w, "name", &e.name, e.message.as_deref());
            0
        }
        Event::Error(e) => {
            encode_name_message(&mut w, "error", &e.error, e.message.as_deref());
            0
        }
        Event::Unknown { .. } => 0,
    };
    (w.into_bytes(), at)
}

/// Encodes an event as a complete frame (header + body). `Unknown` events encode as nothing.
pub fn encode(event: &Event) -> Vec<u8> {
    encode_frame(event, false).0
}

/// A persisted event (`#commit`, `#sync`, `#identity`, `#account`) encoded once by its
/// producer, before the sequencer knows its seq. Canonical key order puts `seq` at a fixed
/// place in each type, so the sequencer only writes the number there: no second encoding and
/// no copy of the body.
#[derive(Debug)]
pub struct Unsequenced {
    buf: Vec<u8>,
    /// Offset of the 9-byte seq placeholder.
    at: usize,
}

impl Unsequenced {
    /// `None` for event types that carry no seq.
    pub fn encode(event: &Event) -> Option<Unsequenced> {
        event.seq()?;
        let (buf, at) = encode_frame(event, true);
        Some(Unsequenced { buf, at })
    }

    /// The finished frame with `seq` in place, byte for byte what `encode` gives for the event
    /// with that seq. Moves only the bytes before the seq (the header and, for a commit, its
    /// ops and rev), never the blocks.
    pub fn sequence(mut self, seq: u64) -> Bytes {
        let mut head = [0u8; 9];
        let n = match seq {
            0..=23 => {
                head[0] = seq as u8;
                1
            }
            24..=0xff => {
                head[0] = 0x18;
                head[1] = seq as u8;
                2
            }
            0x100..=0xffff => {
                head[0] = 0x19;
                head[1..3].copy_from_slice(&(seq as u16).to_be_bytes());
                3
            }
            0x1_0000..=0xffff_ffff => {
                head[0] = 0x1a;
                head[1..5].copy_from_slice(&(seq as u32).to_be_bytes());
                5
            }
            _ => {
                head[0] = 0x1b;
                head[1..9].copy_from_slice(&seq.to_be_bytes());
                9
            }
        };
        let shift = 9 - n;
        let at = self.at;
        self.buf.copy_within(0..at, shift);
        self.buf[at + shift..at + 9].copy_from_slice(&head[..n]);
        Bytes::from(self.buf).slice(shift..)
    }
}

/// An error frame (`op: -1`), e.g. `FutureCursor` or `ConsumerTooSlow`.
pub fn error_frame(error: &str, message: Option<&str>) -> Vec<u8> {
    encode(&Event::Error(ErrorFrame {
        error: error.to_owned(),
        message: message.map(str::to_owned),
    }))
}

/// An `#info` frame, e.g. `OutdatedCursor`.
pub fn info_frame(name: &str, message: Option<&str>) -> Vec<u8> {
    encode(&Event::Info(InfoEvent {
        name: name.to_owned(),
        message: message.map(str::to_owned),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(e: Event) {
        let bytes = Bytes::from(encode(&e));
        // The sequencer's path (encode with a slot, fill the seq in) gives the same bytes.
        if let Some(seq) = e.seq() {
            for s in [0, 23, 24, 255, 256, 65_535, 65_536, 1 << 32, seq as u64] {
                let mut want = e.clone();
                want.set_seq(s as i64);
                let slot = Unsequenced::encode(&e).expect("persisted type");
                assert_eq!(slot.sequence(s).to_vec(), encode(&want), "seq {s}");
            }
        }
        let d = decode(&bytes).expect("decodes strictly");
        assert_eq!(d, e);
        // The relay's own frames, read back as Jetstream reads them.
        match (read_sequenced(&bytes), &e) {
            (Ok(Sequenced::Commit(c)), Event::Commit(want)) => {
                assert_eq!(
                    c.to_event(&bytes).as_ref(),
                    Ok(want),
                    "a commit read in place"
                );
            }
            (Ok(Sequenced::Other(d)), want) if !matches!(want, Event::Commit(_)) => {
                assert_eq!(&d, want);
            }
            (got, _) => panic!("read_sequenced gave {got:?} for {e:?}"),
        }
        let want = match &e {
            Event::Info(_) | Event::Error(_) | Event::Unknown { .. } => Peek::Other,
            _ => Peek::Repo {
                seq: e.seq(),
                did: e.did(),
            },
        };
        assert_eq!(peek(&bytes), Ok(want));
        assert_eq!(encode(&d), bytes.to_vec());
    }

    /// A commit event with `ops` (the other fields are fixed).
    fn commit_event(ops: Vec<RepoOp>) -> CommitEvent {
        CommitEvent {
            seq: 5,
            rebase: false,
            too_big: false,
            repo: "did:plc:abc".into(),
            commit: Cid::dag_cbor(b"x"),
            rev: "3lhhxizu5wr2d".into(),
            since: None,
            blocks: Bytes::from_static(b"\x01\x02"),
            ops,
            blobs: vec![],
            prev_data: Some(Cid::dag_cbor(b"x")),
            time: "2024-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn all_types_round_trip() {
        let c = Cid::dag_cbor(b"x");
        round_trip(Event::Commit(commit_event(vec![
            RepoOp {
                action: "create".into(),
                path: "a.b.c/x".into(),
                cid: Some(c),
                prev: None,
            },
            RepoOp {
                action: "delete".into(),
                path: "a.b.c/y".into(),
                cid: None,
                prev: Some(c),
            },
        ])));
        round_trip(Event::Sync(SyncEvent {
            seq: 1,
            did: "did:plc:abc".into(),
            blocks: Bytes::from_static(b"\x00"),
            rev: "3lhhxizu5wr2d".into(),
            time: "2024-01-01T00:00:00Z".into(),
        }));
        round_trip(Event::Identity(IdentityEvent {
            seq: 2,
            did: "did:plc:abc".into(),
            time: "t".into(),
            handle: Some("a.test".into()),
        }));
        round_trip(Event::Account(AccountEvent {
            seq: 3,
            did: "did:plc:abc".into(),
            time: "t".into(),
            active: false,
            status: Some("takendown".into()),
        }));
        round_trip(Event::Info(InfoEvent {
            name: "OutdatedCursor".into(),
            message: None,
        }));
        round_trip(Event::Error(ErrorFrame {
            error: "FutureCursor".into(),
            message: Some("m".into()),
        }));
    }

    /// Without the canonical pass, a cut log record is still an error, and no damaged byte
    /// makes the reader panic (a flip inside a value may still read as some event: the log's
    /// CRC, not the decoder, catches those).
    #[test]
    fn sequenced_decode_refuses_damaged_frames() {
        let bytes = encode(&Event::Identity(IdentityEvent {
            seq: 2,
            did: "did:plc:abc".into(),
            time: "t".into(),
            handle: Some("a.test".into()),
        }));
        let op = RepoOp {
            action: "create".into(),
            path: "app.bsky.feed.post/3l".into(),
            cid: Some(Cid::dag_cbor(b"r")),
            prev: None,
        };
        let commit = encode(&Event::Commit(commit_event(vec![op])));
        for frame in [&bytes, &commit] {
            for cut in 0..frame.len() {
                let cut = Bytes::copy_from_slice(&frame[..cut]);
                assert!(read_sequenced(&cut).is_err());
            }
        }
        for at in 0..commit.len() {
            for flip in [0x01, 0x20, 0x80, 0xff] {
                let mut b = commit.clone();
                b[at] ^= flip;
                // Either refused or, where the flip lands in a value, decoded as some event.
                let b = Bytes::from(b);
                if let Ok(Sequenced::Commit(c)) = read_sequenced(&b) {
                    let _ = c.ops().count();
                    let _ = c.to_event(&b);
                }
            }
        }
    }

    #[test]
    fn header_encodings_match_spec() {
        assert_eq!(
            header_bytes("#commit"),
            [
                0xa2, 0x61, 0x74, 0x67, 0x23, 0x63, 0x6f, 0x6d, 0x6d, 0x69, 0x74, 0x62, 0x6f, 0x70,
                0x01
            ]
        );
        assert_eq!(
            &error_frame("X", None)[..5],
            &[0xa1, 0x62, 0x6f, 0x70, 0x20]
        );
    }

    #[test]
    fn fatal_vs_schema_errors() {
        // Trailing garbage: fatal.
        let mut f = encode(&Event::Info(InfoEvent {
            name: "x".into(),
            message: None,
        }));
        f.push(0);
        assert!(peek(&f).is_err(), "peek finds what is fatal");
        assert!(decode(&Bytes::from(f)).unwrap_err().is_fatal());
        // Header only: fatal.
        assert!(peek(&header_bytes("#commit")).is_err());
        assert!(
            decode(&Bytes::from(header_bytes("#info")))
                .unwrap_err()
                .is_fatal()
        );
        // #account without `active`: schema error only.
        let mut w = Writer::from_vec(header_bytes("#account"));
        w.map(3)
            .str("did")
            .str("did:plc:x")
            .str("seq")
            .i64(1)
            .str("time")
            .str("t");
        let f = w.into_bytes();
        assert_eq!(
            peek(&f),
            Ok(Peek::Repo {
                seq: Some(1),
                did: Some("did:plc:x")
            }),
            "the body is left to decode"
        );
        let e = decode(&Bytes::from(f)).unwrap_err();
        assert!(!e.is_fatal(), "{e}");
        // A #commit whose `repo` is not text: peek reports no DID (a schema error, not fatal).
        let mut w = Writer::from_vec(header_bytes("#commit"));
        w.map(2).str("seq").i64(7).str("repo").i64(1);
        assert_eq!(
            peek(&w.into_bytes()),
            Ok(Peek::Repo {
                seq: Some(7),
                did: None
            })
        );
        // Unknown type: reported, not an error.
        let mut w = Writer::from_vec(header_bytes("#tombstone"));
        w.map(0);
        assert!(matches!(
            decode(&Bytes::from(w.into_bytes())),
            Ok(Event::Unknown { .. })
        ));
    }
}
