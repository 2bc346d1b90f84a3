//! The background downlink: holds the cloud's update stream open, decodes pushed norm states
//! and hands them to the inference loop, which validates and swaps them between batches.
//! Reconnects with backoff; a dead link shows as a read timeout (the cloud sends a heartbeat
//! frame every 5 s).

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use cema_model::NormState;
use cema_wire::FrameDecoder;

use crate::client::CloudClient;
use crate::uplink::Backoff;

/// Largest frame accepted (a norm state of a ResNet-50 is ~0.4 MB).
pub const MAX_FRAME: usize = 32 << 20;

/// What arrived on the stream.
pub enum Incoming {
    State {
        state: NormState,
        bytes: usize,
    },
    /// A frame that was not a norm state (logged and counted by the runtime).
    Garbage {
        reason: String,
        bytes: usize,
    },
}

pub struct Downlink {
    pub rx: Receiver<Incoming>,
    stop: Arc<AtomicBool>,
}

impl Downlink {
    /// `installed` is the version the edge holds; a reconnect asks only for newer ones.
    pub fn start(client: CloudClient, installed: Arc<AtomicU64>) -> Downlink {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::Builder::new()
            .name("cema-downlink".into())
            .spawn(move || run(client, installed, tx, st))
            .expect("spawn downlink thread");
        Downlink { rx, stop }
    }
}

impl Drop for Downlink {
    fn drop(&mut self) {
        // The thread notices at its next frame or heartbeat (≤ 5 s) and exits.
        self.stop.store(true, Ordering::Release);
    }
}

fn run(
    client: CloudClient,
    installed: Arc<AtomicU64>,
    tx: Sender<Incoming>,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = Backoff::default();
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Acquire) {
        let mut stream = match client.updates(installed.load(Ordering::Acquire)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(device = client.device(), "update stream: {e}");
                backoff.sleep(&stop);
                continue;
            }
        };
        backoff.reset();
        let mut dec = FrameDecoder::new(MAX_FRAME);
        'read: while !stop.load(Ordering::Acquire) {
            let n = match stream.read(&mut buf) {
                Ok(0) | Err(_) => break 'read,
                Ok(n) => n,
            };
            dec.push(&buf[..n]);
            loop {
                match dec.next_frame() {
                    Ok(Some(frame)) if frame.is_empty() => {}
                    Ok(Some(frame)) => {
                        let msg = match NormState::from_bytes(&frame, "pushed update") {
                            Ok(state) => Incoming::State {
                                state,
                                bytes: frame.len() + 4,
                            },
                            Err(e) => Incoming::Garbage {
                                reason: e.to_string(),
                                bytes: frame.len() + 4,
                            },
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Incoming::Garbage {
                            reason: e.to_string(),
                            bytes: dec.buffered(),
                        });
                        break 'read;
                    }
                }
            }
        }
        if !stop.load(Ordering::Acquire) {
            backoff.sleep(&stop);
        }
    }
}
