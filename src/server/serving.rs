//! Which hyper connection serves a caller's stream. hyper-util's auto builder reads
//! the first 24 bytes to tell HTTP/2 (prior knowledge) from HTTP/1, and hands them to
//! hyper's HTTP/1 server as a first read of their own; hyper then finds less than a full
//! buffer free and grows its read buffer to 16 KiB, which every idle keep-alive
//! connection keeps. A plain TCP stream is peeked at instead (the bytes stay in the
//! socket): when they cannot begin the HTTP/2 preface, hyper's HTTP/1 server reads
//! them itself, and its 8 KiB buffer stays 8 KiB. A TLS stream is not peeked at: one
//! whose handshake chose HTTP/1.1 by ALPN is served by the HTTP/1 server directly; one
//! that chose h2, or nothing, takes the version read.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A caller's stream, as far as choosing the protocol goes.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP stream to peek at, when the bytes on it are the caller's own.
    fn tcp(&self) -> Option<&TcpStream>;

    /// True when the TLS handshake settled on HTTP/1.1 (ALPN `http/1.1`): nothing is
    /// left to read to choose the protocol.
    fn negotiated_http1(&self) -> bool {
        false
    }
}

impl Stream for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for tokio_rustls::server::TlsStream<I> {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }

    fn negotiated_http1(&self) -> bool {
        self.get_ref().1.alpn_protocol() == Some(b"http/1.1")
    }
}

/// True once the caller's first bytes (peeked, left in the socket) cannot begin the
/// HTTP/2 preface; false when they might (HTTP/2, or too few bytes to tell), at end of
/// stream or on an error, which the auto builder then handles as before.
pub(super) async fn speaks_http1(tcp: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut first = [0u8; PREFACE.len()];
    match tcp.peek(&mut first).await {
        Ok(n) if n > 0 => !PREFACE.starts_with(&first[..n]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// What `speaks_http1` says of a connection whose caller sent `first`, and whether
    /// the bytes were left for hyper to read.
    async fn sniffed(first: &[u8]) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut caller = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        caller.write_all(first).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        let http1 = super::speaks_http1(&accepted).await;
        let mut read = vec![0u8; first.len()];
        accepted.read_exact(&mut read).await.unwrap();
        assert_eq!(read, first, "peeking consumed nothing");
        http1
    }

    #[tokio::test]
    async fn only_bytes_that_cannot_begin_the_http2_preface_are_taken_for_http1() {
        assert!(sniffed(b"GET /export/0.1/export HTTP/1.1\r\nHost: h\r\n\r\n").await);
        assert!(sniffed(b"POST /x HTTP/1.1\r\n").await);
        assert!(sniffed(b"PRI /not-a-preface HTTP/1.1\r\n").await);
        assert!(!sniffed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await);
        // Too few bytes to tell: the version-sniffing path decides.
        assert!(!sniffed(b"PRI * HT").await);
        assert!(!sniffed(b"P").await);
    }
}
