//! What the fuzz target `agent_host` (`proto/fuzz`, run by `scripts/fuzz`)
//! runs: the host's reading of what a guest agent sends, which is hostile.
//! Here so that a unit test runs the committed seeds through the same code
//! on stable Rust.
//!
//! An input is an agent's side of two connections: response lines up to
//! the first NUL byte, then the bytes of a `Stream` connection, the first
//! of which picks the size of the reads that deliver the rest.

use crate::agent::{FrameReader, MAX_FRAME, MAX_LINE, decode_response, frame_header};

/// Decodes every line (a response decoded, encoded again, decodes the
/// same) and reads every frame (at most one frame and one read held; the
/// frames read, written again, are what was sent, up to where reading
/// stopped).
pub fn agent_host(data: &[u8]) {
    read_as_host(data);
}

/// [`agent_host`], which gives how many responses and frames it read.
fn read_as_host(data: &[u8]) -> (usize, usize) {
    let mut read_back = (0, 0);
    let (lines, stream) = match data.iter().position(|b| *b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    for line in lines.split(|b| *b == b'\n') {
        if line.len() > MAX_LINE {
            continue;
        }
        if let Ok(r) = decode_response(line) {
            let again = serde_json::to_vec(&r).expect("a decoded response encodes");
            let back = decode_response(&again).expect("an encoded response decodes");
            assert_eq!(back, r, "{}", String::from_utf8_lossy(&again));
            read_back.0 += 1;
        }
    }
    let Some((first, bytes)) = stream.split_first() else {
        return read_back;
    };
    let read = 1 + usize::from(*first) * 97;
    let mut frames = FrameReader::default();
    let mut written = Vec::new();
    'reads: for chunk in bytes.chunks(read) {
        frames.push(chunk);
        loop {
            match frames.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.data.len() <= MAX_FRAME);
                    written.extend_from_slice(&frame_header(f.kind, f.data.len()));
                    written.extend_from_slice(&f.data);
                    read_back.1 += 1;
                }
                Ok(None) => break,
                Err(_) => break 'reads,
            }
        }
        assert!(frames.held() <= 5 + MAX_FRAME + read);
    }
    assert!(bytes.starts_with(&written));
    read_back
}

#[cfg(test)]
mod tests {
    /// The committed seeds (`proto/fuzz/corpus/agent_host`) pass, and
    /// are read as what they are: 9 responses and 3 frames.
    #[test]
    fn seeds_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/agent_host");
        let mut read = (0, 0);
        for e in std::fs::read_dir(&dir).expect("the seed corpus") {
            let bytes = std::fs::read(e.expect("a seed").path()).expect("a seed's bytes");
            let (responses, frames) = super::read_as_host(&bytes);
            read = (read.0 + responses, read.1 + frames);
        }
        assert_eq!(read, (9, 3), "seeds in {}", dir.display());
    }
}
