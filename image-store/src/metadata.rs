//! Image metadata in SQLite (`images.db`): images by ID, the names (tags and
//! digest references) that point at them, and the snapshots they stack.
//! Survives restarts; every change is one transaction.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::digest::Digest;

pub type DbResult<T> = Result<T, rusqlite::Error>;

/// An image record. `id` is the config digest.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub id: Digest,
    pub manifest_digest: Digest,
    pub size: u64,
    pub chain_ids: Vec<Digest>,
}

pub struct Metadata {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    manifest_digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    chain_ids TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    is_digest INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS names_by_image ON names(image_id);
CREATE TABLE IF NOT EXISTS snapshots (
    chain_id TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL,
    inodes INTEGER NOT NULL
);
";

fn digest(s: String) -> DbResult<Digest> {
    Digest::parse(&s).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

impl Metadata {
    pub fn open(path: &Path) -> DbResult<Metadata> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Metadata { conn })
    }

    /// Records an image and points `names` at it. A name that pointed at
    /// another image moves; images left without any name are returned (the
    /// caller removes them).
    pub fn put_image(
        &mut self,
        image: &ImageRecord,
        names: &[(String, bool)],
    ) -> DbResult<Vec<Digest>> {
        let tx = self.conn.transaction()?;
        let chain = image
            .chain_ids
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join(",");
        tx.execute(
            "INSERT INTO images (id, manifest_digest, size, chain_ids) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET manifest_digest = ?2, size = ?3, chain_ids = ?4",
            params![
                image.id.as_str(),
                image.manifest_digest.as_str(),
                image.size as i64,
                chain
            ],
        )?;
        let mut displaced = Vec::new();
        for (name, is_digest) in names {
            let old: Option<String> = tx
                .query_row("SELECT image_id FROM names WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()?;
            tx.execute(
                "INSERT INTO names (name, image_id, is_digest) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET image_id = ?2, is_digest = ?3",
                params![name, image.id.as_str(), *is_digest as i64],
            )?;
            if let Some(old) = old.filter(|o| o != image.id.as_str()) {
                let left: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM names WHERE image_id = ?1",
                    [&old],
                    |r| r.get(0),
                )?;
                if left == 0 {
                    displaced.push(digest(old)?);
                }
            }
        }
        tx.commit()?;
        Ok(displaced)
    }

    pub fn image(&self, id: &Digest) -> DbResult<Option<ImageRecord>> {
        self.conn
            .query_row(
                "SELECT id, manifest_digest, size, chain_ids FROM images WHERE id = ?1",
                [id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?
            .map(record)
            .transpose()
    }

    pub fn images(&self) -> DbResult<Vec<ImageRecord>> {
        let mut st = self
            .conn
            .prepare("SELECT id, manifest_digest, size, chain_ids FROM images ORDER BY id")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.map(|r| r.and_then(record)).collect()
    }

    /// The image a name points at.
    pub fn resolve(&self, name: &str) -> DbResult<Option<Digest>> {
        self.conn
            .query_row("SELECT image_id FROM names WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?
            .map(digest)
            .transpose()
    }

    /// (tags, digest references) of an image, sorted.
    pub fn names(&self, id: &Digest) -> DbResult<(Vec<String>, Vec<String>)> {
        let mut st = self
            .conn
            .prepare("SELECT name, is_digest FROM names WHERE image_id = ?1 ORDER BY name")?;
        let mut tags = Vec::new();
        let mut digests = Vec::new();
        for row in st.query_map([id.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })? {
            let (name, is_digest) = row?;
            if is_digest != 0 {
                digests.push(name);
            } else {
                tags.push(name);
            }
        }
        Ok((tags, digests))
    }

    /// Removes an image and its names; returns whether it existed.
    pub fn remove_image(&mut self, id: &Digest) -> DbResult<bool> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM names WHERE image_id = ?1", [id.as_str()])?;
        let n = tx.execute("DELETE FROM images WHERE id = ?1", [id.as_str()])?;
        tx.commit()?;
        Ok(n > 0)
    }

    pub fn has_snapshot(&self, chain_id: &Digest) -> DbResult<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM snapshots WHERE chain_id = ?1",
                [chain_id.as_str()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn put_snapshot(&self, chain_id: &Digest, bytes: u64, inodes: u64) -> DbResult<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO snapshots (chain_id, bytes, inodes) VALUES (?1, ?2, ?3)",
            params![chain_id.as_str(), bytes as i64, inodes as i64],
        )?;
        Ok(())
    }

    pub fn remove_snapshot(&self, chain_id: &Digest) -> DbResult<()> {
        self.conn.execute(
            "DELETE FROM snapshots WHERE chain_id = ?1",
            [chain_id.as_str()],
        )?;
        Ok(())
    }

    /// Every snapshot recorded, by chain ID.
    pub fn snapshots(&self) -> DbResult<Vec<Digest>> {
        let mut st = self.conn.prepare("SELECT chain_id FROM snapshots")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|r| r.and_then(digest)).collect()
    }

    /// Bytes and inodes of all snapshots.
    pub fn snapshot_usage(&self) -> DbResult<(u64, u64)> {
        self.conn.query_row(
            "SELECT COALESCE(SUM(bytes), 0), COALESCE(SUM(inodes), 0) FROM snapshots",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
    }
}

fn record((id, manifest, size, chain): (String, String, i64, String)) -> DbResult<ImageRecord> {
    Ok(ImageRecord {
        id: digest(id)?,
        manifest_digest: digest(manifest)?,
        size: size.max(0) as u64,
        chain_ids: chain
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| digest(s.to_string()))
            .collect::<DbResult<_>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_move_and_orphans_are_reported() {
        let t = tempfile::tempdir().unwrap();
        let mut m = Metadata::open(&t.path().join("db")).unwrap();
        let a = ImageRecord {
            id: Digest::of(b"a"),
            manifest_digest: Digest::of(b"ma"),
            size: 10,
            chain_ids: vec![Digest::of(b"l1"), Digest::of(b"l2")],
        };
        let b = ImageRecord {
            id: Digest::of(b"b"),
            manifest_digest: Digest::of(b"mb"),
            size: 20,
            chain_ids: vec![Digest::of(b"l1")],
        };
        assert!(
            m.put_image(&a, &[("x:1".into(), false)])
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            m.put_image(&b, &[("x:1".into(), false)]).unwrap(),
            vec![a.id.clone()]
        );
        assert_eq!(m.resolve("x:1").unwrap(), Some(b.id.clone()));
        assert_eq!(m.image(&a.id).unwrap(), Some(a.clone()));
        assert!(m.remove_image(&a.id).unwrap());
        assert!(!m.remove_image(&a.id).unwrap());
        assert_eq!(m.images().unwrap(), vec![b.clone()]);
        drop(m);
        let m = Metadata::open(&t.path().join("db")).unwrap();
        assert_eq!(m.names(&b.id).unwrap(), (vec!["x:1".to_string()], vec![]));
    }
}
