//! The content store: small blobs (manifests, indexes, configs) by digest
//! under `blobs/sha256/<hex>`, written to a temporary name and renamed into
//! place only once their digest checks out. Layers are not kept here: they
//! stream straight into snapshots (see `pull`).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::digest::Digest;

pub struct ContentStore {
    dir: PathBuf,
}

impl ContentStore {
    /// Opens (creating) the store and drops temporary files a crash left.
    pub fn open(root: &Path) -> io::Result<ContentStore> {
        let dir = root.join("blobs").join("sha256");
        fs::create_dir_all(&dir)?;
        for e in fs::read_dir(&dir)? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(ContentStore { dir })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Stores `bytes` under `digest` after checking that they hash to it.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> io::Result<()> {
        let got = Digest::of(bytes);
        if &got != digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("content is {got}, expected {digest}"),
            ));
        }
        let path = self.path(digest);
        if path.exists() {
            return Ok(());
        }
        let tmp = self
            .dir
            .join(format!(".tmp-{}-{}", digest.hex(), std::process::id()));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    }

    /// Reads a blob back, verifying it again (the disk is not trusted to
    /// keep what was written).
    pub fn get(&self, digest: &Digest) -> io::Result<Vec<u8>> {
        let bytes = fs::read(self.path(digest))?;
        if &Digest::of(&bytes) != digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("stored blob {digest} is corrupt"),
            ));
        }
        Ok(bytes)
    }

    pub fn remove(&self, digest: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Bytes and files used.
    pub fn usage(&self) -> io::Result<(u64, u64)> {
        let mut bytes = 0;
        let mut files = 0;
        for e in fs::read_dir(&self.dir)? {
            let m = e?.metadata()?;
            bytes += m.len();
            files += 1;
        }
        Ok((bytes, files))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_on_put_and_get() {
        let t = tempfile::tempdir().unwrap();
        let s = ContentStore::open(t.path()).unwrap();
        let d = Digest::of(b"hello");
        assert!(s.put(&d, b"other").is_err());
        s.put(&d, b"hello").unwrap();
        assert_eq!(s.get(&d).unwrap(), b"hello");
        fs::write(t.path().join("blobs/sha256").join(d.hex()), b"evil").unwrap();
        assert!(s.get(&d).is_err());
        s.remove(&d).unwrap();
        s.remove(&d).unwrap();
    }
}
