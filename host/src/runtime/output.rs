//! Guest stdout and stderr: kept up to a cap and turned into log lines after the call.
//! Beyond the cap, writes still succeed and the rest is counted, not kept: a guest that
//! prints a lot loses lines in the log, never its invocation (wasmtime's
//! `MemoryOutputPipe` traps the guest when it is full, so `println!` would fail it).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Default)]
struct Kept {
    bytes: BytesMut,
    dropped: u64,
}

/// A capped, never-failing output stream.
#[derive(Clone)]
pub struct CappedOutput {
    capacity: usize,
    kept: Arc<Mutex<Kept>>,
}

impl CappedOutput {
    pub fn new(capacity: usize) -> CappedOutput {
        CappedOutput {
            capacity,
            kept: Arc::default(),
        }
    }

    /// What was kept, and how many bytes beyond the cap were dropped.
    pub fn contents(&self) -> (Bytes, u64) {
        let kept = self.kept.lock().expect("output lock");
        (kept.bytes.clone().freeze(), kept.dropped)
    }

    fn keep(&self, bytes: &[u8]) {
        let mut kept = self.kept.lock().expect("output lock");
        let room = self.capacity.saturating_sub(kept.bytes.len());
        let take = bytes.len().min(room);
        kept.bytes.extend_from_slice(&bytes[..take]);
        kept.dropped += (bytes.len() - take) as u64;
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.keep(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CappedOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.keep(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_the_cap_and_counts_the_rest() {
        let mut out = CappedOutput::new(8);
        out.write(Bytes::from_static(b"12345")).unwrap();
        out.write(Bytes::from_static(b"67890")).unwrap();
        assert!(out.check_write().unwrap() > 0, "a full stream still takes writes");
        let (kept, dropped) = out.contents();
        assert_eq!(&kept[..], b"12345678");
        assert_eq!(dropped, 2);
    }
}
