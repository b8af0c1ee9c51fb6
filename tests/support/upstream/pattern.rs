//! The deterministic byte pattern of the streaming tests: generated chunk by chunk as a
//! body is polled ([`PatternBody`]) and verified as bytes arrive ([`Verifier`]), so no
//! side ever holds a whole body.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Pattern chunks are this long; each starts with its index (8 bytes LE) so a lost,
/// repeated or reordered chunk is caught.
pub const CHUNK: usize = 64 * 1024;

fn block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// The pattern byte expected at `offset` within chunk `index` (slow path for the
/// first 8 bytes of each chunk).
fn header_byte(index: u64, pos: usize) -> u8 {
    index.to_le_bytes()[pos]
}

/// A body of `len` pattern bytes, generated chunk by chunk as it is polled.
pub struct PatternBody {
    sent: u64,
    len: u64,
}

impl PatternBody {
    pub fn new(len: u64) -> PatternBody {
        PatternBody { sent: 0, len }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= self.len {
            return Poll::Ready(None);
        }
        let index = self.sent / CHUNK as u64;
        let n = (self.len - self.sent).min(CHUNK as u64) as usize;
        let mut chunk = block()[..n].to_vec();
        let head = n.min(8);
        chunk[..head].copy_from_slice(&index.to_le_bytes()[..head]);
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}

/// Checks bytes against the pattern as they arrive, counting them.
#[derive(Debug, Default)]
pub struct Verifier {
    pub offset: u64,
    pub first_mismatch: Option<u64>,
    pub broken: bool,
}

impl Verifier {
    pub fn feed(&mut self, mut data: &[u8]) {
        let block = block();
        while !data.is_empty() {
            let index = self.offset / CHUNK as u64;
            let pos = (self.offset % CHUNK as u64) as usize;
            let n = data.len().min(CHUNK - pos);
            let (now, rest) = data.split_at(n);
            if self.first_mismatch.is_none() {
                let ok = now
                    .iter()
                    .enumerate()
                    .take(8usize.saturating_sub(pos))
                    .all(|(i, b)| *b == header_byte(index, pos + i));
                let skip = 8usize.saturating_sub(pos).min(n);
                if !ok || now[skip..] != block[pos + skip..pos + n] {
                    self.first_mismatch = Some(self.offset);
                }
            }
            self.offset += n as u64;
            data = rest;
        }
    }

    /// True when every byte so far matched and the body was not cut.
    pub fn intact(&self) -> bool {
        self.first_mismatch.is_none() && !self.broken
    }
}
