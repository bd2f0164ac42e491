//! The in-memory tail of one stream: a byte ring holding the most recent output.
//!
//! The ring stores raw bytes, not lines, so the capture path only copies the end of each chunk
//! into it; lines are split only when someone asks for a tail. Every byte ever pushed has a
//! sequence number (its offset in the stream since the log was created), which is what lets a
//! follower continue exactly where a snapshot ended.

use std::borrow::Cow;

/// Most recent output bytes of one stream, bounded by `cap`.
pub(crate) struct Ring {
    /// Grows on demand up to `cap`, so an instance that prints little costs little memory.
    buf: Vec<u8>,
    cap: usize,
    /// Where the next byte goes (once `buf` has reached `cap`; before that, `buf.len()`).
    head: usize,
    /// Valid bytes, ending just before `head`.
    len: usize,
    /// Bytes ever pushed: the sequence number of the next byte.
    total: u64,
    /// Whether the oldest held byte starts a line (nothing dropped yet, or the last dropped byte
    /// was a newline). When false the first held line is a truncated fragment.
    front_clean: bool,
}

/// What a follower gets when it asks for the bytes from a sequence number on.
pub(crate) struct ReadFrom {
    /// Bytes between the requested position and the oldest byte still held (lost to a slow reader).
    pub skipped: u64,
    /// The held bytes from the requested position (or the oldest held byte) to the end.
    pub data: Vec<u8>,
    /// Whether `data` starts at a line boundary.
    pub starts_line: bool,
    /// The sequence number just after `data`.
    pub end: u64,
}

impl Ring {
    pub fn new(cap: usize) -> Ring {
        Ring {
            buf: Vec::new(),
            cap,
            head: 0,
            len: 0,
            total: 0,
            front_clean: true,
        }
    }

    /// Sequence number of the next byte (bytes pushed so far).
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn last_byte(&self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let (a, b) = self.slices();
        b.last().or(a.last()).copied()
    }

    /// Appends `data`, dropping the oldest bytes beyond `cap`.
    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if self.cap == 0 || data.is_empty() {
            return;
        }
        let cap = self.cap;
        // Only the last `cap` bytes of a big chunk can survive: copy just those.
        let data = if data.len() > cap {
            self.front_clean = data[data.len() - cap - 1] == b'\n';
            self.len = 0;
            self.head = 0;
            &data[data.len() - cap..]
        } else {
            data
        };

        // Growth phase: the buffer is linear (head == len == buf.len()) until it would exceed cap.
        if self.buf.len() < cap {
            if self.buf.len() + data.len() <= cap {
                let wanted = (self.buf.capacity() * 2)
                    .max(self.buf.len() + data.len())
                    .min(cap);
                self.buf.reserve_exact(wanted - self.buf.len());
                self.buf.extend_from_slice(data);
                self.head = self.buf.len();
                self.len = self.buf.len();
                return;
            }
            // From here on the buffer is a full-size ring; the held bytes are buf[..len], ending at head.
            self.buf.resize(cap, 0);
            self.head = self.len;
        }

        let overflow = (self.len + data.len()).saturating_sub(cap);
        if overflow > 0 {
            let start = (self.head + cap - self.len) % cap;
            self.front_clean = self.buf[(start + overflow - 1) % cap] == b'\n';
        }
        let first = data.len().min(cap - self.head);
        self.buf[self.head..self.head + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        self.head = (self.head + data.len()) % cap;
        self.len = (self.len + data.len()).min(cap);
    }

    /// The held bytes, oldest first, as two slices.
    fn slices(&self) -> (&[u8], &[u8]) {
        let blen = self.buf.len();
        if self.len == 0 || blen == 0 {
            return (&[], &[]);
        }
        let start = (self.head + blen - self.len) % blen;
        if start + self.len <= blen {
            (&self.buf[start..start + self.len], &[])
        } else {
            (&self.buf[start..], &self.buf[..self.head])
        }
    }

    fn contiguous(&self) -> Cow<'_, [u8]> {
        match self.slices() {
            (a, []) => Cow::Borrowed(a),
            (a, b) => Cow::Owned([a, b].concat()),
        }
    }

    /// The last `n` lines, the unterminated last line included.
    pub fn tail(&self, n: usize) -> Vec<String> {
        last_lines(&self.contiguous(), self.front_clean, n, true)
    }

    /// The last `n` complete lines, and the sequence number where the unterminated last line
    /// starts: a follower continues from there, so that line reaches it whole once it ends.
    pub fn backlog(&self, n: usize) -> (Vec<String>, u64) {
        let bytes = self.contiguous();
        let partial = bytes.iter().rev().take_while(|&&b| b != b'\n').count();
        let lines = last_lines(&bytes[..bytes.len() - partial], self.front_clean, n, false);
        (lines, self.total - partial as u64)
    }

    /// The held bytes from sequence number `seq` on.
    pub fn read_from(&self, seq: u64) -> ReadFrom {
        let oldest = self.total - self.len as u64;
        let (skipped, from) = if seq < oldest {
            (oldest - seq, oldest)
        } else {
            (0, seq.min(self.total))
        };
        let offset = (from - oldest) as usize;
        let (a, b) = self.slices();
        let data = if offset < a.len() {
            [&a[offset..], b].concat()
        } else {
            b[offset - a.len()..].to_vec()
        };
        ReadFrom {
            skipped,
            data,
            starts_line: skipped == 0 || self.front_clean,
            end: self.total,
        }
    }
}

/// Splits `bytes` into lines and returns the last `n` (at most [`super::TAIL_MAX_LINES`]).
///
/// `front_clean == false` means the first segment is the cut-off end of a longer line; it is left
/// out unless it is all there is.
fn last_lines(bytes: &[u8], front_clean: bool, n: usize, with_partial: bool) -> Vec<String> {
    let n = n.min(super::TAIL_MAX_LINES);
    if n == 0 || bytes.is_empty() {
        return Vec::new();
    }
    let last_nl = bytes.iter().rposition(|&b| b == b'\n');
    let (complete, partial) = match last_nl {
        Some(i) => (Some(&bytes[..i]), &bytes[i + 1..]),
        None => (None, bytes),
    };
    let segments = bytes.iter().filter(|&&b| b == b'\n').take(2).count()
        + usize::from(!partial.is_empty() && with_partial);
    let skip_first = !front_clean && segments > 1;
    let is_first = |seg: &[u8]| seg.as_ptr() == bytes.as_ptr();

    let mut out: Vec<&[u8]> = Vec::with_capacity(n.min(64));
    if with_partial && !partial.is_empty() && !(skip_first && is_first(partial)) {
        out.push(partial);
    }
    if let Some(complete) = complete {
        for seg in complete.rsplit(|&b| b == b'\n') {
            if out.len() == n {
                break;
            }
            if skip_first && is_first(seg) {
                break;
            }
            out.push(seg);
        }
    }
    out.iter()
        .rev()
        .map(|seg| String::from_utf8_lossy(seg).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pushed(cap: usize, chunks: &[&[u8]]) -> Ring {
        let mut r = Ring::new(cap);
        for c in chunks {
            r.push(c);
        }
        r
    }

    #[test]
    fn tail_includes_the_partial_last_line() {
        let r = pushed(64, &[b"a\nb\n", b"c\npar", b"tial"]);
        assert_eq!(r.tail(10), ["a", "b", "c", "partial"]);
        assert_eq!(r.tail(2), ["c", "partial"]);
        assert_eq!(r.tail(0), Vec::<String>::new());
        assert_eq!(r.total(), 13);
    }

    #[test]
    fn empty_lines_are_lines() {
        let r = pushed(64, &[b"\n\nx\n"]);
        assert_eq!(r.tail(10), ["", "", "x"]);
    }

    #[test]
    fn wrapping_keeps_the_newest_bytes_and_drops_the_cut_line() {
        // cap 10: after "0123\n5678\nab\n" (13 bytes) the ring holds "3\n5678\nab\n".
        let r = pushed(10, &[b"0123\n", b"5678\n", b"ab\n"]);
        assert_eq!(r.tail(10), ["5678", "ab"]);
        // A cut that falls exactly after a newline keeps the first line.
        let r = pushed(10, &[b"0123\n", b"5678\n", b"abcd\n"]);
        assert_eq!(r.tail(10), ["5678", "abcd"]);
        let r = pushed(10, &[b"012\n", b"5678\n", b"abcd\n"]);
        assert_eq!(r.tail(10), ["5678", "abcd"]);
    }

    #[test]
    fn many_small_pushes_wrap_correctly() {
        let mut r = Ring::new(100);
        let mut all = String::new();
        for i in 0..1000 {
            let line = format!("line {i}\n");
            r.push(line.as_bytes());
            all.push_str(&line);
        }
        assert_eq!(r.tail(3), ["line 997", "line 998", "line 999"]);
        let held = r.tail(1000);
        assert!(held.len() < 20, "{held:?}");
        assert_eq!(held.last().map(String::as_str), Some("line 999"));
        assert!(all.ends_with(&(held.join("\n") + "\n")));
    }

    #[test]
    fn a_chunk_bigger_than_the_ring_keeps_its_end() {
        let mut big = Vec::new();
        for i in 0..100 {
            big.extend_from_slice(format!("{i:03}\n").as_bytes());
        }
        let r = pushed(40, &[b"old\n", &big]);
        assert_eq!(
            r.tail(100),
            (90..100).map(|i| format!("{i:03}")).collect::<Vec<_>>()
        );
        let r = pushed(41, &[b"old\n", &big]);
        assert_eq!(
            r.tail(100),
            (90..100).map(|i| format!("{i:03}")).collect::<Vec<_>>()
        );
        let r = pushed(39, &[&big]);
        assert_eq!(
            r.tail(100),
            (91..100).map(|i| format!("{i:03}")).collect::<Vec<_>>()
        );
    }

    #[test]
    fn one_line_longer_than_the_ring_is_kept_truncated() {
        let r = pushed(8, &[b"abcdefghijklmnop"]);
        assert_eq!(r.tail(5), ["ijklmnop"]);
    }

    #[test]
    fn tail_is_capped() {
        let mut r = Ring::new(1 << 20);
        for i in 0..2000 {
            r.push(format!("{i}\n").as_bytes());
        }
        let t = r.tail(5000);
        assert_eq!(t.len(), crate::logs::TAIL_MAX_LINES);
        assert_eq!(t.last().map(String::as_str), Some("1999"));
    }

    #[test]
    fn backlog_leaves_the_partial_line_to_the_follower() {
        let r = pushed(64, &[b"a\nb\npar"]);
        let (lines, seq) = r.backlog(10);
        assert_eq!(lines, ["a", "b"]);
        assert_eq!(seq, 4);
        let read = r.read_from(seq);
        assert_eq!(read.data, b"par");
        assert_eq!(read.skipped, 0);
        assert!(read.starts_line);
        assert_eq!(read.end, 7);
    }

    #[test]
    fn read_from_reports_what_was_lost() {
        let r = pushed(10, &[b"0123\n", b"5678\n", b"ab\n"]);
        let read = r.read_from(0);
        assert_eq!(read.skipped, 3);
        assert_eq!(read.data, b"3\n5678\nab\n");
        assert!(!read.starts_line);
        let read = r.read_from(10);
        assert_eq!(read.skipped, 0);
        assert_eq!(read.data, b"ab\n");
        let read = r.read_from(13);
        assert!(read.data.is_empty());
    }

    #[test]
    fn last_byte_follows_the_wrap() {
        let r = pushed(4, &[b"ab", b"cd", b"e"]);
        assert_eq!(r.last_byte(), Some(b'e'));
        assert_eq!(Ring::new(4).last_byte(), None);
    }
}
