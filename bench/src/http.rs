//! A minimal HTTP/1.1 keep-alive client for load generation: one request, one
//! whole response (Content-Length bodies only, which is what the gateway sends).

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
        let mut chunk = [0u8; 8192];
        loop {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])?.to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .context("content-length")?
                    .parse()?;
                while self.buf.len() < end + 4 + length {
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        bail!("connection closed mid-body");
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return Ok(());
            }
        }
    }
}
