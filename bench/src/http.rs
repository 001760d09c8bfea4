//! A minimal HTTP/1.1 keep-alive client for load generation: one request, one
//! whole response (a Content-Length body, or a chunked one, which is how the
//! gateway sends a compressed answer; the body is returned as received).

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Connection {
    host: String,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    pub async fn open(host: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(host)
            .await
            .with_context(|| format!("connect {host}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            host: host.to_owned(),
            stream,
            buf: Vec::with_capacity(8192),
        })
    }

    /// Sends a request; returns the status and the body.
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        if let Err(err) = self.exchange(request.as_bytes()).await {
            // The server may close an idle keep-alive connection: reconnect once.
            *self = Self::open(&self.host.clone()).await?;
            self.exchange(request.as_bytes()).await.context(err)?;
        }
        let end = self
            .buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no header end")?;
        let head = std::str::from_utf8(&self.buf[..end])?;
        let status: u16 = head.split_whitespace().nth(1).context("status")?.parse()?;
        Ok((
            status,
            String::from_utf8_lossy(&self.buf[end + 4..]).into_owned(),
        ))
    }

    async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        loop {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed");
            }
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])?.to_ascii_lowercase();
                if head.contains("\r\ntransfer-encoding: chunked") {
                    return self.read_chunks(end + 4).await;
                }
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .context("content-length")?
                    .parse()?;
                while self.buf.len() < end + 4 + length {
                    self.fill().await?;
                }
                return Ok(());
            }
        }
    }

    /// Reads a chunked body that starts at `start` in the buffer, up to and
    /// including its last (empty) chunk.
    async fn read_chunks(&mut self, start: usize) -> anyhow::Result<()> {
        let mut at = start;
        loop {
            let line_end = loop {
                if let Some(i) = self.buf[at..].windows(2).position(|w| w == b"\r\n") {
                    break at + i;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[at..line_end])?;
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).context("chunk size")?;
            // The chunk's data and its CRLF (for the last chunk: the final CRLF).
            let next = line_end + 2 + size + 2;
            while self.buf.len() < next {
                self.fill().await?;
            }
            if size == 0 {
                return Ok(());
            }
            at = next;
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            bail!("connection closed mid-body");
        }
        Ok(())
    }
}
