//! One TFTP read transfer as a pure state machine: option negotiation, then windows of
//! DATA blocks driven by ACKs and timeouts. The caller sends what each [`Action`] says.

use std::time::Duration;

/// Server-side limits and defaults for option negotiation and retransmission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest blksize granted (RFC 2348 allows up to 65464).
    pub max_blksize: u16,
    /// Largest windowsize granted.
    pub max_windowsize: u16,
    /// Retransmission timeout when the client asks for none.
    pub default_timeout: Duration,
    /// Retransmissions of one window before giving up.
    pub max_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blksize: 65464,
            max_windowsize: 64,
            default_timeout: Duration::from_secs(1),
            max_retries: 5,
        }
    }
}

/// The outcome of option negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Bytes per DATA block.
    pub blksize: usize,
    /// Blocks sent before waiting for an ACK.
    pub windowsize: u16,
    /// Retransmission timeout.
    pub timeout: Duration,
    /// Options to acknowledge in an OACK (empty: no OACK, start with DATA 1).
    pub oack: Vec<(String, String)>,
}

/// Grants the options the server understands, clamped to `limits`; ignores the rest
/// (RFC 2347: unknown options are left out of the OACK).
pub fn negotiate(options: &[(String, String)], file_len: u64, limits: &Limits) -> Negotiated {
    let mut n = Negotiated {
        blksize: 512,
        windowsize: 1,
        timeout: limits.default_timeout,
        oack: Vec::new(),
    };
    for (name, value) in options {
        let Ok(v) = value.parse::<u64>() else {
            continue;
        };
        match name.as_str() {
            "blksize" if v >= 8 => {
                let b = v.min(u64::from(limits.max_blksize));
                n.blksize = b as usize;
                n.oack.push((name.clone(), b.to_string()));
            }
            "windowsize" if v >= 1 => {
                let w = v.min(u64::from(limits.max_windowsize));
                n.windowsize = w as u16;
                n.oack.push((name.clone(), w.to_string()));
            }
            "timeout" if (1..=255).contains(&v) => {
                n.timeout = Duration::from_secs(v);
                n.oack.push((name.clone(), v.to_string()));
            }
            "tsize" => n.oack.push((name.clone(), file_len.to_string())),
            _ => {}
        }
    }
    n
}

/// What the caller must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the OACK.
    SendOack,
    /// Send DATA blocks `from..=to` (block numbers from 1; see [`Session::block`]).
    SendBlocks(u64, u64),
    /// Keep waiting (duplicate or stale ACK).
    Wait,
    /// The last block is acknowledged.
    Done,
    /// Give up: too many timeouts.
    Fail(String),
}

/// A read transfer in progress.
#[derive(Clone, Debug)]
pub struct Session {
    blksize: u64,
    window: u64,
    last: u64,
    acked: u64,
    sent: u64,
    awaiting_oack: bool,
    retries: u32,
    max_retries: u32,
}

impl Session {
    /// A transfer of `file_len` bytes under `negotiated` options.
    pub fn new(negotiated: &Negotiated, file_len: u64, limits: &Limits) -> Session {
        let blksize = negotiated.blksize as u64;
        Session {
            blksize,
            window: u64::from(negotiated.windowsize.max(1)),
            last: file_len / blksize + 1,
            acked: 0,
            sent: 0,
            awaiting_oack: !negotiated.oack.is_empty(),
            retries: 0,
            max_retries: limits.max_retries,
        }
    }

    /// The first action: OACK, or the first window.
    pub fn start(&mut self) -> Action {
        if self.awaiting_oack {
            Action::SendOack
        } else {
            self.next_window()
        }
    }

    fn next_window(&mut self) -> Action {
        let to = (self.acked + self.window).min(self.last);
        self.sent = to;
        Action::SendBlocks(self.acked + 1, to)
    }

    /// Block `n`'s byte range in the file: (offset, length), and its wire number.
    pub fn block(&self, n: u64) -> (u64, u64, u16) {
        let offset = (n - 1) * self.blksize;
        (offset, self.blksize, (n % 65536) as u16)
    }

    /// Handles an ACK of wire block `wire`.
    pub fn on_ack(&mut self, wire: u16) -> Action {
        if self.awaiting_oack {
            if wire != 0 {
                return Action::Wait;
            }
            self.awaiting_oack = false;
            self.retries = 0;
            return self.next_window();
        }
        let Some(k) = (self.acked + 1..=self.sent).find(|k| (k % 65536) as u16 == wire) else {
            return Action::Wait;
        };
        self.acked = k;
        self.retries = 0;
        if k == self.last {
            Action::Done
        } else {
            self.next_window()
        }
    }

    /// Handles a retransmission timeout: resend what is unacknowledged, or give up.
    pub fn on_timeout(&mut self) -> Action {
        self.retries += 1;
        if self.retries > self.max_retries {
            return Action::Fail(format!("no ACK after {} retransmissions", self.max_retries));
        }
        if self.awaiting_oack {
            Action::SendOack
        } else {
            Action::SendBlocks(self.acked + 1, self.sent)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::type_complexity)]
mod tests {
    use super::*;

    fn opts(o: &[(&str, &str)]) -> Vec<(String, String)> {
        o.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn negotiation_table() {
        let l = Limits::default();
        let cases: Vec<(Vec<(String, String)>, usize, u16, usize)> = vec![
            (opts(&[]), 512, 1, 0),
            (opts(&[("blksize", "1468")]), 1468, 1, 1),
            (opts(&[("blksize", "99999")]), 65464, 1, 1),
            (opts(&[("blksize", "4")]), 512, 1, 0),
            (opts(&[("windowsize", "16"), ("tsize", "0")]), 512, 16, 2),
            (opts(&[("windowsize", "1000")]), 512, 64, 1),
            (opts(&[("timeout", "0"), ("bogus", "1")]), 512, 1, 0),
        ];
        for (o, blk, win, n_oack) in cases {
            let n = negotiate(&o, 1000, &l);
            assert_eq!(
                (n.blksize, n.windowsize, n.oack.len()),
                (blk, win, n_oack),
                "{o:?}"
            );
        }
        let n = negotiate(&opts(&[("tsize", "0")]), 1234, &l);
        assert_eq!(n.oack, opts(&[("tsize", "1234")]));
    }

    /// (event, expected action) steps; event: Some(ack) or None (timeout).
    fn run(n: &Negotiated, len: u64, steps: &[(Option<u16>, Action)]) {
        let l = Limits {
            max_retries: 2,
            ..Limits::default()
        };
        let mut s = Session::new(n, len, &l);
        let mut first = true;
        for (i, (ev, want)) in steps.iter().enumerate() {
            let got = match ev {
                _ if first => {
                    first = false;
                    s.start()
                }
                Some(a) => s.on_ack(*a),
                None => s.on_timeout(),
            };
            assert_eq!(&got, want, "step {i}");
        }
    }

    #[test]
    fn lockstep_transfer_with_retransmission() {
        let n = negotiate(&[], 1024, &Limits::default());
        // 1024 bytes at 512: blocks 1, 2 and an empty block 3.
        run(
            &n,
            1024,
            &[
                (None, Action::SendBlocks(1, 1)),
                (Some(0), Action::Wait),
                (None, Action::SendBlocks(1, 1)),
                (Some(1), Action::SendBlocks(2, 2)),
                (Some(1), Action::Wait),
                (Some(2), Action::SendBlocks(3, 3)),
                (Some(3), Action::Done),
            ],
        );
    }

    #[test]
    fn windowed_transfer_restarts_after_partial_ack_and_fails_after_retries() {
        let n = negotiate(
            &opts(&[("windowsize", "4"), ("blksize", "100")]),
            950,
            &Limits::default(),
        );
        // 950 bytes at 100: 10 blocks (the 10th holds 50 bytes).
        run(
            &n,
            950,
            &[
                (None, Action::SendOack),
                (Some(0), Action::SendBlocks(1, 4)),
                (Some(2), Action::SendBlocks(3, 6)),
                (Some(6), Action::SendBlocks(7, 10)),
                (None, Action::SendBlocks(7, 10)),
                (None, Action::SendBlocks(7, 10)),
                (None, Action::Fail("no ACK after 2 retransmissions".into())),
            ],
        );
    }

    #[test]
    fn block_numbers_roll_over() {
        let n = negotiate(&opts(&[("blksize", "8")]), 8 * 70000, &Limits::default());
        let mut s = Session::new(&n, 8 * 70000, &Limits::default());
        assert_eq!(s.start(), Action::SendOack);
        s.on_ack(0);
        for k in 1..=65536u64 {
            assert_eq!(
                s.on_ack((k % 65536) as u16),
                Action::SendBlocks(k + 1, k + 1)
            );
        }
        assert_eq!(s.block(65537), (65536 * 8, 8, 1));
    }
}
