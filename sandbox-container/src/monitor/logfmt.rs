//! The kubelet CRI log format:
//! `<RFC3339Nano UTC timestamp> <stdout|stderr> <P|F> <msg>\n`.
//!
//! A line longer than [`MAX_CHUNK`] bytes is written as `P` (partial)
//! chunks of exactly [`MAX_CHUNK`] bytes followed by the rest as `F`
//! (full), the way containerd splits with its 16 KiB buffer; the chunking
//! does not depend on how the bytes arrived. A last line without a newline
//! is written as `F` at end of stream.

use std::time::{SystemTime, UNIX_EPOCH};

/// The longest message of one log line (containerd's 16 KiB).
pub const MAX_CHUNK: usize = 16 << 10;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

/// `time` as RFC 3339 in UTC with nine fraction digits,
/// e.g. `2026-11-26T05:30:00.123456789Z` (fixed width, so lines sort).
pub fn rfc3339_nano(time: SystemTime) -> String {
    let (secs, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            // Before 1970: count back, keeping nanos in 0..1e9.
            let d = e.duration();
            let mut s = -(d.as_secs() as i64);
            let mut n = d.subsec_nanos();
            if n > 0 {
                s -= 1;
                n = 1_000_000_000 - n;
            }
            (s, n)
        }
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// One formatted log line, newline included.
pub fn format_line(time: SystemTime, stream: StreamKind, partial: bool, msg: &[u8]) -> Vec<u8> {
    let ts = rfc3339_nano(time);
    let mut line = Vec::with_capacity(ts.len() + msg.len() + 12);
    line.extend_from_slice(ts.as_bytes());
    line.push(b' ');
    line.extend_from_slice(stream.as_str().as_bytes());
    line.extend_from_slice(if partial { b" P " } else { b" F " });
    line.extend_from_slice(msg);
    line.push(b'\n');
    line
}

/// Cuts a byte stream into log messages: `(partial, message)` pairs.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; calls `out` for every complete chunk.
    pub fn feed(&mut self, mut data: &[u8], out: &mut dyn FnMut(bool, &[u8])) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.push(&data[..i], out);
                    out(false, &self.pending);
                    self.pending.clear();
                    data = &data[i + 1..];
                }
                None => {
                    self.push(data, out);
                    data = &[];
                }
            }
        }
    }

    /// End of stream: a pending line without newline becomes `F`.
    pub fn finish(&mut self, out: &mut dyn FnMut(bool, &[u8])) {
        if !self.pending.is_empty() {
            out(false, &self.pending);
            self.pending.clear();
        }
    }

    fn push(&mut self, mut bytes: &[u8], out: &mut dyn FnMut(bool, &[u8])) {
        while !bytes.is_empty() {
            if self.pending.len() == MAX_CHUNK {
                out(true, &self.pending);
                self.pending.clear();
            }
            let take = (MAX_CHUNK - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn formats_rfc3339_nano() {
        let t = UNIX_EPOCH + Duration::new(1_795_671_000, 123_456_789);
        assert_eq!(rfc3339_nano(t), "2026-11-26T05:30:00.123456789Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        // A leap day, and the end of a century year that is a leap year.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_nano(t), "2000-02-29T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(978_307_199);
        assert_eq!(rfc3339_nano(t), "2000-12-31T23:59:59.000000000Z");
        let t = UNIX_EPOCH - Duration::from_nanos(1);
        assert_eq!(rfc3339_nano(t), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn formats_a_line() {
        let t = UNIX_EPOCH + Duration::new(1, 5);
        assert_eq!(
            format_line(t, StreamKind::Stderr, true, b"x y"),
            b"1970-01-01T00:00:01.000000005Z stderr P x y\n"
        );
    }

    fn split(chunks: &[&[u8]], finish: bool) -> Vec<(bool, usize, Vec<u8>)> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        let mut f = |p: bool, m: &[u8]| out.push((p, m.len(), m[..m.len().min(8)].to_vec()));
        for c in chunks {
            s.feed(c, &mut f);
        }
        if finish {
            s.finish(&mut f);
        }
        out
    }

    #[test]
    fn splits_lines_and_long_lines() {
        assert_eq!(
            split(&[b"a\nb", b"c\n\nd"], true),
            vec![
                (false, 1, b"a".to_vec()),
                (false, 2, b"bc".to_vec()),
                (false, 0, vec![]),
                (false, 1, b"d".to_vec())
            ]
        );
        assert!(split(&[b"no newline"], false).is_empty());

        let long = vec![b'x'; 40 << 10];
        let want = vec![(true, MAX_CHUNK), (true, MAX_CHUNK), (false, 8 << 10)];
        let got: Vec<_> = split(&[&long, b"\n"], true)
            .into_iter()
            .map(|(p, n, _)| (p, n))
            .collect();
        assert_eq!(got, want);
        // Same result when the bytes trickle in.
        let pieces: Vec<&[u8]> = long.chunks(1000).chain([&b"\n"[..]]).collect();
        let got: Vec<_> = split(&pieces, false)
            .into_iter()
            .map(|(p, n, _)| (p, n))
            .collect();
        assert_eq!(got, want);
        // Exactly one chunk plus newline is a single F.
        let exact = vec![b'y'; MAX_CHUNK];
        let got: Vec<_> = split(&[&exact, b"\n"], true)
            .into_iter()
            .map(|(p, n, _)| (p, n))
            .collect();
        assert_eq!(got, vec![(false, MAX_CHUNK)]);
    }
}
