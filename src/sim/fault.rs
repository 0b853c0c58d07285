//! Simulated upstream faults. Each produces exactly one defect.
//!
//! *Event* faults are generated against a snapshot of the account's repo that is restored
//! afterwards, so the defective event is the only thing that differs from a healthy stream.
//! *Connection* faults are injected while serving a subscriber and are never stored in the
//! host's log, so a relay that reconnects with its cursor is not fed the same defect forever.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// A commit whose signature bytes are garbage.
    ForgedSignature,
    /// A commit properly signed, but by a key that is not the account's.
    WrongKey,
    /// A CAR block whose bytes do not match its CID.
    BadBlockHash,
    /// A commit missing an MST node it needs.
    MissingBlocks,
    /// A commit whose `prevData` does not match its ops (inversion fails).
    WrongPrevData,
    /// A properly signed commit with a rev older than the account's latest.
    RevBackwards,
    /// A frame repeating the previous frame's seq.
    RepeatedSeq,
    /// A valid commit for an account hosted on another PDS.
    Impersonation,
    /// A frame encoded non-canonically (connection-level).
    NonCanonical,
    /// A frame over 5 MB (connection-level).
    OversizeFrame,
    /// Bytes that are not CBOR (connection-level).
    Garbage,
    /// Half a WebSocket frame, then silence (connection-level).
    Stall,
    /// The TCP connection dropped without a close frame (connection-level).
    Disconnect,
    /// The PDS restarts with its seq reset to 1.
    Restart,
}

pub const ALL: [FaultKind; 14] = [
    FaultKind::ForgedSignature,
    FaultKind::WrongKey,
    FaultKind::BadBlockHash,
    FaultKind::MissingBlocks,
    FaultKind::WrongPrevData,
    FaultKind::RevBackwards,
    FaultKind::RepeatedSeq,
    FaultKind::Impersonation,
    FaultKind::NonCanonical,
    FaultKind::OversizeFrame,
    FaultKind::Garbage,
    FaultKind::Stall,
    FaultKind::Disconnect,
    FaultKind::Restart,
];

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::ForgedSignature => "forged-signature",
            FaultKind::WrongKey => "wrong-key",
            FaultKind::BadBlockHash => "bad-block-hash",
            FaultKind::MissingBlocks => "missing-blocks",
            FaultKind::WrongPrevData => "wrong-prev-data",
            FaultKind::RevBackwards => "rev-backwards",
            FaultKind::RepeatedSeq => "repeated-seq",
            FaultKind::Impersonation => "impersonation",
            FaultKind::NonCanonical => "non-canonical",
            FaultKind::OversizeFrame => "oversize-frame",
            FaultKind::Garbage => "garbage",
            FaultKind::Stall => "stall",
            FaultKind::Disconnect => "disconnect",
            FaultKind::Restart => "restart",
        }
    }

    pub fn parse(s: &str) -> Option<FaultKind> {
        ALL.iter().copied().find(|k| k.name() == s)
    }

    /// Injected while serving a connection rather than stored as an event.
    pub fn is_connection_level(self) -> bool {
        matches!(
            self,
            FaultKind::NonCanonical
                | FaultKind::OversizeFrame
                | FaultKind::Garbage
                | FaultKind::Stall
                | FaultKind::Disconnect
        )
    }
}

/// `KIND:FRACTION` from the command line: the fraction of hosts that get the fault.
pub fn parse_spec(s: &str) -> Result<(FaultKind, f64), String> {
    let (k, f) = s
        .split_once(':')
        .ok_or_else(|| format!("fault {s:?}: expected KIND:FRACTION"))?;
    let kind = FaultKind::parse(k).ok_or_else(|| {
        format!(
            "unknown fault {k:?}; known: {}",
            ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
        )
    })?;
    let frac: f64 = f
        .parse()
        .map_err(|_| format!("fault {s:?}: fraction must be a number"))?;
    if !(0.0..=1.0).contains(&frac) {
        return Err(format!("fault {s:?}: fraction must be between 0 and 1"));
    }
    Ok((kind, frac))
}
