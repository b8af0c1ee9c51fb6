//! Which server reads a caller's stream. A plain TCP stream goes to keygate's own
//! HTTP/1.1 server (`h1`) first, which hands it to hyper — with the bytes it read — at
//! the first head it does not serve itself ([`Prefixed`]). A TLS stream whose handshake
//! chose HTTP/1.1 by ALPN goes to hyper's HTTP/1 server directly; one that chose h2, or
//! nothing, and a handed-over stream go to hyper-util's auto builder, which reads the
//! first 24 bytes to tell HTTP/2 (prior knowledge) from HTTP/1.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A caller's stream, as far as choosing the server goes.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The plain TCP stream, for keygate's HTTP/1.1 server; else the stream back.
    fn into_tcp(self) -> Result<TcpStream, Self>
    where
        Self: Sized;

    /// True when the TLS handshake settled on HTTP/1.1 (ALPN `http/1.1`): nothing is
    /// left to read to choose the protocol.
    fn negotiated_http1(&self) -> bool {
        false
    }
}

impl Stream for TcpStream {
    fn into_tcp(self) -> Result<TcpStream, Self> {
        Ok(self)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for tokio_rustls::server::TlsStream<I> {
    fn into_tcp(self) -> Result<TcpStream, Self> {
        Err(self)
    }

    fn negotiated_http1(&self) -> bool {
        self.get_ref().1.alpn_protocol() == Some(b"http/1.1")
    }
}

/// A stream keygate's HTTP/1.1 server handed over: the bytes it had read, then the rest.
pub(super) struct Prefixed {
    read: Bytes,
    stream: TcpStream,
}

impl Prefixed {
    pub(super) fn new(stream: TcpStream, read: Bytes) -> Prefixed {
        Prefixed { read, stream }
    }
}

impl Stream for Prefixed {
    fn into_tcp(self) -> Result<TcpStream, Self> {
        Err(self)
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn a_handed_over_stream_reads_what_was_read_then_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut caller = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        caller.write_all(b" world").await.unwrap();
        caller.shutdown().await.unwrap();
        let mut prefixed = super::Prefixed::new(accepted, bytes::Bytes::from_static(b"hello"));
        let mut read = String::new();
        prefixed.read_to_string(&mut read).await.unwrap();
        assert_eq!(read, "hello world");
        prefixed.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        caller.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
