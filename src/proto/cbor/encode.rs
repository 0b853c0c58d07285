//! Canonical DAG-CBOR writing on top of `minicbor`'s encoder, which already emits minimal heads
//! and definite lengths. Callers write map keys in canonical order themselves (typed encoders know
//! their fields statically); [`crate::proto::cbor::Value`] sorts generically.

use crate::proto::cid::Cid;
use minicbor::data::Tag;

/// Appends canonical CBOR to a `Vec<u8>`.
pub struct Writer {
    enc: minicbor::Encoder<Vec<u8>>,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

// Writing into a Vec cannot fail, so the encoder's `Result<_, Infallible>` is dropped below.
impl Writer {
    pub fn new() -> Self {
        Self::with_capacity(256)
    }

    pub fn with_capacity(n: usize) -> Self {
        Writer {
            enc: minicbor::Encoder::new(Vec::with_capacity(n)),
        }
    }

    /// Continues writing after existing bytes (e.g. a frame header).
    pub fn from_vec(v: Vec<u8>) -> Self {
        Writer {
            enc: minicbor::Encoder::new(v),
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.enc.into_writer()
    }

    pub fn len(&self) -> usize {
        self.enc.writer().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn map(&mut self, n: usize) -> &mut Self {
        let _ = self.enc.map(n as u64);
        self
    }

    pub fn array(&mut self, n: usize) -> &mut Self {
        let _ = self.enc.array(n as u64);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        let _ = self.enc.str(s);
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let _ = self.enc.bytes(b);
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        let _ = self.enc.u64(v);
        self
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        let _ = self.enc.i64(v);
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        let _ = self.enc.bool(v);
        self
    }

    pub fn null(&mut self) -> &mut Self {
        let _ = self.enc.null();
        self
    }

    pub fn cid(&mut self, c: &Cid) -> &mut Self {
        let b = c.as_bytes();
        let _ = self.enc.tag(Tag::new(42));
        let _ = self.enc.bytes_len(b.len() as u64 + 1);
        let w = self.enc.writer_mut();
        w.push(0);
        w.extend_from_slice(b);
        self
    }

    pub fn nullable_cid(&mut self, c: Option<&Cid>) -> &mut Self {
        match c {
            Some(c) => self.cid(c),
            None => self.null(),
        }
    }

    pub fn nullable_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.str(s),
            None => self.null(),
        }
    }

    /// Appends bytes that are already canonical CBOR (a pre-encoded item).
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.enc.writer_mut().extend_from_slice(b);
        self
    }
}
