use super::*;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};

fn bucket(name: &str, items: &[(&[u8], &[u8])]) -> Bucket {
    Bucket {
        name: name.as_bytes().to_vec(),
        items: items
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect(),
    }
}

fn owned(items: Vec<(&[u8], &[u8])>) -> Vec<(Vec<u8>, Vec<u8>)> {
    items
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

#[test]
fn small_buckets_read_back() {
    let bs = vec![
        bucket("a", &[(b"k1", b"v1"), (b"k2", b"")]),
        bucket("empty", &[]),
        bucket("z", &[(b"", b"empty key")]),
    ];
    let bytes = write_db(&bs);
    assert_eq!(bytes.len() % PAGE_BYTES, 0);
    let db = Db::open(&bytes).unwrap();
    assert_eq!(db.size(), bytes.len() as u64);
    let all = db.buckets().unwrap();
    assert_eq!(all.len(), 3);
    for (b, (name, items)) in bs.iter().zip(all) {
        assert_eq!(b.name, name);
        assert_eq!(b.items, owned(items));
    }
    assert_eq!(db.bucket(b"nope").unwrap(), None);
    assert_eq!(owned(db.bucket(b"a").unwrap().unwrap()), bs[0].items);
}

#[test]
fn many_items_make_branch_levels_and_big_values_overflow() {
    // 200,000 small items: three levels; plus values of 1 MiB spanning
    // 257 pages each.
    let small: Vec<(Vec<u8>, Vec<u8>)> = (0u32..200_000)
        .map(|i| (i.to_be_bytes().to_vec(), (i * 7).to_le_bytes().to_vec()))
        .collect();
    let big: Vec<(Vec<u8>, Vec<u8>)> = (0u8..3)
        .map(|i| (vec![i], vec![i.wrapping_mul(31); 1 << 20]))
        .collect();
    let bs = vec![
        Bucket {
            name: b"big".to_vec(),
            items: big,
        },
        Bucket {
            name: b"small".to_vec(),
            items: small,
        },
    ];
    let bytes = write_db(&bs);
    let db = Db::open(&bytes).unwrap();
    for (b, (name, items)) in bs.iter().zip(db.buckets().unwrap()) {
        assert_eq!(b.name, name);
        assert_eq!(b.items, owned(items));
    }
}

#[test]
fn meta_pages_fall_back_and_garbage_is_an_error_not_a_panic() {
    let bs = vec![bucket("a", &[(b"k", b"v")])];
    let good = write_db(&bs);
    // Page 1 (newest) damaged: page 0 still opens.
    let mut one = good.clone();
    one[PAGE_BYTES + 20] ^= 1;
    assert!(Db::open(&one).unwrap().bucket(b"a").unwrap().is_some());
    // Page 0 damaged: page 1 found at the usual page size.
    let mut zero = good.clone();
    zero[20] ^= 1;
    assert!(Db::open(&zero).unwrap().bucket(b"a").unwrap().is_some());
    // Both: not a database.
    let mut both = one.clone();
    both[20] ^= 1;
    assert_eq!(Db::open(&both).unwrap_err(), BoltError::NoValidMeta);
    assert_eq!(Db::open(b"short").unwrap_err(), BoltError::NoValidMeta);
    // Every single-byte corruption of the tree pages: an error or the
    // same or other items, never a panic.
    for at in 3 * PAGE_BYTES..good.len() {
        for x in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[at] ^= x;
            if let Ok(db) = Db::open(&bad) {
                let _ = db.buckets();
            }
        }
    }
    // Truncated files.
    for len in [0, 16, PAGE_BYTES, 2 * PAGE_BYTES + 100, good.len() - 1] {
        if let Ok(db) = Db::open(&good[..len]) {
            assert!(db.buckets().is_err(), "truncated to {len}");
        }
    }
}

#[test]
fn a_cycle_or_a_page_out_of_range_is_refused() {
    let items: Vec<(Vec<u8>, Vec<u8>)> = (0u32..1000)
        .map(|i| (i.to_be_bytes().to_vec(), vec![0; 16]))
        .collect();
    let good = write_db(&[Bucket {
        name: b"b".to_vec(),
        items,
    }]);
    assert_eq!(
        Db::open(&good)
            .unwrap()
            .bucket(b"b")
            .unwrap()
            .unwrap()
            .len(),
        1000
    );
    let branch = (3..good.len() / PAGE_BYTES)
        .find(|p| good[p * PAGE_BYTES + 8] == 0x01)
        .expect("a branch page");
    let child = branch * PAGE_BYTES + 16 + 8;
    // The branch's first child is the branch itself: a cycle.
    let mut cycle = good.clone();
    cycle[child..child + 8].copy_from_slice(&(branch as u64).to_le_bytes());
    let err = Db::open(&cycle).unwrap().bucket(b"b").unwrap_err();
    assert!(
        matches!(
            err,
            BoltError::SharedPage { .. } | BoltError::TooDeep { .. }
        ),
        "{err:?}"
    );
    // A child beyond the file's pages.
    let mut out = good.clone();
    out[child..child + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = Db::open(&out).unwrap().bucket(b"b").unwrap_err();
    assert!(matches!(err, BoltError::OutOfBounds { .. }), "{err:?}");
}

#[test]
fn buckets_written_in_any_order_into_a_file_read_back_sorted() {
    let mut file = tempfile::tempfile().unwrap();
    let mut db = DbWriter::new(&mut file).unwrap();
    let big: Vec<(Vec<u8>, Vec<u8>)> = (0u32..20_000)
        .map(|i| (i.to_be_bytes().to_vec(), vec![i as u8; 40]))
        .collect();
    for (name, items) in [("z", &big[..]), ("a", &big[..3]), ("m", &[][..])] {
        let mut b = db.bucket(name.as_bytes());
        for (k, v) in items {
            b.push(k, v).unwrap();
        }
        b.finish().unwrap();
    }
    let end = db.finish().unwrap().stream_position().unwrap();
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut bytes).unwrap();
    assert_eq!(end, bytes.len() as u64);
    assert_eq!(bytes.len() % PAGE_BYTES, 0);
    let db = Db::open(&bytes).unwrap();
    let names: Vec<&[u8]> = db.buckets().unwrap().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, vec![&b"a"[..], b"m", b"z"]);
    assert_eq!(owned(db.bucket(b"z").unwrap().unwrap()), big);
    assert_eq!(owned(db.bucket(b"a").unwrap().unwrap()), big[..3].to_vec());
    assert!(db.bucket(b"m").unwrap().unwrap().is_empty());
}

/// A sink that takes `left` bytes, then fails like a full disk.
#[derive(Debug)]
struct Full {
    inner: Cursor<Vec<u8>>,
    left: usize,
}

impl Write for Full {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.left {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.left -= buf.len();
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Full {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[test]
fn a_sink_that_fills_up_is_an_error_at_the_write_that_failed() {
    let items: Vec<(Vec<u8>, Vec<u8>)> = (0u32..5_000)
        .map(|i| (i.to_be_bytes().to_vec(), vec![1; 100]))
        .collect();
    for left in [0, PAGE_BYTES, 3 * PAGE_BYTES, 40 * PAGE_BYTES] {
        let result = (|| {
            let mut db = DbWriter::new(Full {
                inner: Cursor::new(Vec::new()),
                left,
            })?;
            let mut b = db.bucket(b"b");
            for (k, v) in &items {
                b.push(k, v)?;
            }
            b.finish()?;
            db.finish()
        })();
        let err = result.expect_err("a full sink");
        assert_eq!(err.raw_os_error(), Some(28), "left {left}");
    }
}
