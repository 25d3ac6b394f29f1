//! The store's write-ahead log: every acknowledged write is a checksummed record in a
//! segment file made durable with one `fdatasync` per group commit. sled then holds the
//! same writes in memory and is checkpointed (flushed and synced) in the background;
//! segments a checkpoint covers are deleted. On open, records newer than sled's own
//! revision are replayed.
//!
//! Record: `[len u32 LE][crc32 u32 LE][payload]`, payload
//! `[kind u8][rev i64 BE][create_rev i64 BE][key len u32 BE][key][value]`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// One logged write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// 0 = put, 1 = delete.
    pub kind: u8,
    /// The write's revision.
    pub rev: i64,
    /// The key's create revision.
    pub create_rev: i64,
    /// The key.
    pub key: String,
    /// The value (for a delete, the last value).
    pub value: Bytes,
}

/// An open log: the segment being appended to.
pub struct Wal {
    dir: PathBuf,
    seq: u64,
    file: File,
    len: u64,
}

fn segment(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Appends the encoding of `r` to `out`.
pub fn encode(r: &Record, out: &mut Vec<u8>) {
    let payload_len = 1 + 8 + 8 + 4 + r.key.len() + r.value.len();
    let start = out.len();
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(r.kind);
    out.extend_from_slice(&r.rev.to_be_bytes());
    out.extend_from_slice(&r.create_rev.to_be_bytes());
    out.extend_from_slice(&(r.key.len() as u32).to_be_bytes());
    out.extend_from_slice(r.key.as_bytes());
    out.extend_from_slice(&r.value);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the records of one segment, stopping at the first torn or corrupt one.
fn decode_all(buf: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 8 {
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes"));
        let Some(p) = buf.get(at + 8..at + 8 + len) else { break };
        if len < 21 || crc32fast::hash(p) != crc {
            break;
        }
        let klen = u32::from_be_bytes(p[17..21].try_into().expect("4 bytes")) as usize;
        let Some(key) = p.get(21..21 + klen).and_then(|k| std::str::from_utf8(k).ok()) else { break };
        out.push(Record {
            kind: p[0],
            rev: i64::from_be_bytes(p[1..9].try_into().expect("8 bytes")),
            create_rev: i64::from_be_bytes(p[9..17].try_into().expect("8 bytes")),
            key: key.to_string(),
            value: Bytes::copy_from_slice(&p[21 + klen..]),
        });
        at += 8 + len;
    }
    out
}

impl Wal {
    /// Opens the log in `dir`: returns it (appending to a new segment), the records of
    /// the existing segments in order, and those segments' paths.
    pub fn open(dir: &Path) -> std::io::Result<(Wal, Vec<Record>, Vec<PathBuf>)> {
        std::fs::create_dir_all(dir)?;
        let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                let seq = p.file_name()?.to_str()?.strip_suffix(".wal")?.parse().ok()?;
                Some((seq, p))
            })
            .collect();
        segs.sort();
        let mut records = Vec::new();
        for (_, p) in &segs {
            let mut buf = Vec::new();
            File::open(p)?.read_to_end(&mut buf)?;
            records.extend(decode_all(&buf));
        }
        let seq = segs.last().map(|(s, _)| s + 1).unwrap_or(1);
        let file = OpenOptions::new().create(true).append(true).open(segment(dir, seq))?;
        sync_dir(dir)?;
        Ok((Wal { dir: dir.to_path_buf(), seq, file, len: 0 }, records, segs.into_iter().map(|(_, p)| p).collect()))
    }

    /// Appends encoded records and makes them durable.
    pub fn append(&mut self, encoded: &[u8]) -> std::io::Result<()> {
        self.file.write_all(encoded)?;
        self.file.sync_data()?;
        self.len += encoded.len() as u64;
        Ok(())
    }

    /// Bytes in the current segment.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the current segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Starts a new segment; returns the path of the one closed.
    pub fn rotate(&mut self) -> std::io::Result<PathBuf> {
        let old = segment(&self.dir, self.seq);
        self.seq += 1;
        self.file = OpenOptions::new().create(true).append(true).open(segment(&self.dir, self.seq))?;
        sync_dir(&self.dir)?;
        self.len = 0;
        Ok(old)
    }

    /// Deletes segments a checkpoint has made redundant.
    pub fn remove(dir: &Path, segs: &[PathBuf]) -> std::io::Result<()> {
        for s in segs {
            match std::fs::remove_file(s) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(rev: i64) -> Record {
        Record { kind: 0, rev, create_rev: 1, key: format!("/k/{rev}"), value: Bytes::from(vec![b'v'; rev as usize]) }
    }

    #[test]
    fn records_round_trip_and_torn_tails_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, recs, _) = Wal::open(dir.path()).unwrap();
            assert!(recs.is_empty());
            let mut buf = Vec::new();
            for r in 1..=3 {
                encode(&rec(r), &mut buf);
            }
            w.append(&buf).unwrap();
            let mut torn = Vec::new();
            encode(&rec(4), &mut torn);
            torn.truncate(torn.len() - 2);
            w.append(&torn).unwrap();
        }
        let (_, recs, segs) = Wal::open(dir.path()).unwrap();
        assert_eq!(recs, vec![rec(1), rec(2), rec(3)]);
        assert_eq!(segs.len(), 1);
        Wal::remove(dir.path(), &segs).unwrap();
        let (_, recs, _) = Wal::open(dir.path()).unwrap();
        assert!(recs.is_empty());
    }
}
