//! Replies queued for one `sendmmsg(2)`: the socket loop queues the OFFERs of every
//! datagram it drained in one wake-up, and the journal writer the ACKs of one group commit,
//! and each sends them with one system call (through rustix's safe wrapper) instead of
//! one `sendto` per reply.

use std::io::IoSlice;
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

use super::metrics::DhcpMetrics;

/// Replies per `sendmmsg` call (the kernel takes at most 1024).
const MAX_PER_CALL: usize = 256;

/// One encoded reply.
#[derive(Debug)]
pub struct Outgoing {
    /// The (non-blocking) socket it leaves through.
    pub socket: Arc<UdpSocket>,
    /// The encoded datagram.
    pub bytes: Vec<u8>,
    /// Where it goes.
    pub dest: SocketAddrV4,
    /// Message type label of the request (for the `send_error` count).
    pub label: &'static str,
    /// Decremented once the reply has been handed to the kernel (or failed): the server's
    /// count of replies in flight, which its shutdown drain waits for.
    pub inflight: Option<Arc<AtomicUsize>>,
}

/// Replies waiting for [`Outbox::flush`].
#[derive(Debug, Default)]
pub struct Outbox {
    queued: Vec<Outgoing>,
}

impl Outbox {
    /// Queues a reply.
    pub fn push(&mut self, reply: Outgoing) {
        self.queued.push(reply);
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends everything queued: one `sendmmsg` per run of replies through the same socket
    /// (at most [`MAX_PER_CALL`] each). A reply the kernel refuses (a full send buffer,
    /// never seen with UDP at DHCP rates) is dropped like a lost packet, and counted.
    pub fn flush(&mut self, metrics: &DhcpMetrics) {
        let mut rest = &self.queued[..];
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .take(MAX_PER_CALL)
                .take_while(|r| Arc::ptr_eq(&r.socket, &first.socket))
                .count();
            let skip = match send_run(&first.socket, rest.get(..run).unwrap_or_default()) {
                Ok(n) => n.min(run),
                Err(e) => {
                    // The first of the run was refused: drop it, go on with the next.
                    tracing::warn!(dest = %first.dest, error = %e, "DHCP send failed");
                    metrics.packet(first.label, "send_error");
                    1
                }
            };
            rest = rest.get(skip..).unwrap_or_default();
        }
        for r in self.queued.drain(..) {
            if let Some(n) = r.inflight {
                n.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// One `sendmmsg` of `run` (all through `socket`); how many the kernel took.
fn send_run(socket: &UdpSocket, run: &[Outgoing]) -> std::io::Result<usize> {
    let addrs: Vec<SocketAddrAny> = run.iter().map(|r| SocketAddrAny::from(r.dest)).collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = run.iter().map(|r| [IoSlice::new(&r.bytes)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
        run.iter().map(|_| SendAncillaryBuffer::default()).collect();
    let mut msgs: Vec<MMsgHdr<'_>> = addrs
        .iter()
        .zip(&iovs)
        .zip(controls.iter_mut())
        .map(|((a, iov), c)| MMsgHdr::new_with_addr(a, iov, c))
        .collect();
    let n = rustix::net::sendmmsg(socket, &mut msgs, SendFlags::empty())?;
    if n == 0 {
        return Err(std::io::Error::other("sendmmsg sent nothing"));
    }
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every queued reply arrives, across socket runs and calls, and the in-flight count
    /// drops to zero.
    #[test]
    fn flush_sends_every_reply_once() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let _ = socket2::SockRef::from(&rx).set_recv_buffer_size(1 << 20);
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let std::net::SocketAddr::V4(dest) = rx.local_addr().unwrap() else {
            panic!("not v4");
        };
        let a = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let b = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let inflight = Arc::new(AtomicUsize::new(0));
        let mut out = Outbox::default();
        let n = 2 * MAX_PER_CALL + 7;
        for i in 0..n {
            inflight.fetch_add(1, Ordering::SeqCst);
            out.push(Outgoing {
                socket: Arc::clone(if i % 100 == 99 { &b } else { &a }),
                bytes: (i as u32).to_be_bytes().to_vec(),
                dest,
                label: "request",
                inflight: Some(Arc::clone(&inflight)),
            });
        }
        // Read while sending: a default receive buffer holds fewer than n datagrams.
        let reader = std::thread::spawn(move || {
            let mut seen = vec![false; n];
            let mut buf = [0u8; 16];
            for _ in 0..n {
                let len = rx.recv(&mut buf).unwrap();
                let i = u32::from_be_bytes(buf[..len].try_into().unwrap()) as usize;
                assert!(!seen[i], "{i} twice");
                seen[i] = true;
            }
            seen
        });
        out.flush(&DhcpMetrics::new());
        assert!(out.is_empty());
        assert_eq!(inflight.load(Ordering::SeqCst), 0);
        let seen = reader.join().unwrap();
        assert!(seen.iter().all(|s| *s));
    }
}
