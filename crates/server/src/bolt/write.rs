//! Writing a bbolt database in one pass, page by page, into any seekable
//! sink: a backup of a million keys is laid out straight into a file, never
//! whole in memory ([`DbWriter`]); [`write_db`] is the in-memory shorthand.

use std::io::{self, Seek, SeekFrom, Write};

use super::{
    fnv1a64, BRANCH_PAGE, BUCKET_HEADER_BYTES, BUCKET_LEAF, ELEMENT_BYTES, FREELIST_PAGE,
    LEAF_PAGE, MAGIC, META_PAGE, META_SUMMED_BYTES, PAGE_BYTES, PAGE_HEADER_BYTES, VERSION,
};

/// One bucket to write: its name and its items, keys strictly ascending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// The bucket's name (the key in the root tree).
    pub name: Vec<u8>,
    /// (key, value) pairs, keys strictly ascending (bytewise).
    pub items: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Pages before the first tree page: two metas and the (empty) freelist.
const FIRST_TREE_PAGE: u64 = 3;
/// Page id of the freelist.
const FREELIST_PGID: u64 = 2;
/// Transaction id of the newer meta page (page 1); page 0 holds id 0.
const NEWEST_TXID: u64 = 1;
/// Most elements in one node (a page header counts them in a `u16`).
const MAX_NODE_ELEMENTS: usize = u16::MAX as usize;

/// Writes a database holding `buckets` (names strictly ascending), every
/// page full, no free pages, in memory. The result is a whole number of
/// [`PAGE_BYTES`] pages.
///
/// # Panics
/// If names or keys are not strictly ascending (a caller bug: bbolt's
/// lookups would miss items).
pub fn write_db(buckets: &[Bucket]) -> Vec<u8> {
    assert!(
        buckets.windows(2).all(|w| w[0].name < w[1].name),
        "bucket names must be strictly ascending"
    );
    let write = || -> io::Result<Vec<u8>> {
        let mut db = DbWriter::new(io::Cursor::new(Vec::new()))?;
        for b in buckets {
            let mut w = db.bucket(&b.name);
            for (k, v) in &b.items {
                w.push(k, v)?;
            }
            w.finish()?;
        }
        Ok(db.finish()?.into_inner())
    };
    write().expect("writing to memory does not fail")
}

/// A database being written into `out`, one page after another: each
/// bucket's leaves as they fill, its branch levels when it is finished, the
/// root tree, the freelist and the two meta pages (at the start of the
/// file) last. What it keeps in memory is one page of items per open
/// bucket and the first key of every node of the level being built — about
/// 1/100 of a bucket of small items, nothing of a bucket of large values.
///
/// Buckets may be written in any order (the root tree is sorted when the
/// database is finished); one bucket is open at a time. A database that
/// is never [`finish`](DbWriter::finish)ed has no valid meta page: bbolt
/// (and [`super::Db`]) refuse it.
#[derive(Debug)]
pub struct DbWriter<W> {
    out: W,
    /// Pages written, counting the three reserved at the start.
    pages: u64,
    /// (name, root page) of each finished bucket.
    buckets: Vec<(Vec<u8>, u64)>,
    /// One node's bytes, reused.
    scratch: Vec<u8>,
}

impl<W: Write + Seek> DbWriter<W> {
    /// Starts a database in `out`, from its offset 0 (the meta pages are
    /// written there last, by [`DbWriter::finish`]).
    ///
    /// # Errors
    /// Writing to `out` failed.
    pub fn new(mut out: W) -> io::Result<DbWriter<W>> {
        out.seek(SeekFrom::Start(0))?;
        out.write_all(&[0; FIRST_TREE_PAGE as usize * PAGE_BYTES])?;
        Ok(DbWriter {
            out,
            pages: FIRST_TREE_PAGE,
            buckets: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// Opens the bucket `name` for writing; its items go in with
    /// [`BucketWriter::push`], and it is part of the database once
    /// [`BucketWriter::finish`] returns.
    pub fn bucket(&mut self, name: &[u8]) -> BucketWriter<'_, W> {
        BucketWriter {
            db: self,
            name: name.to_vec(),
            tree: Tree::default(),
            last_key: None,
        }
    }

    /// Writes the root tree (every finished bucket), the freelist and the
    /// meta pages, and returns the sink, positioned at the database's end.
    /// The database is a whole number of [`PAGE_BYTES`] pages.
    ///
    /// # Errors
    /// Writing to the sink failed.
    ///
    /// # Panics
    /// If two buckets have the same name (a caller bug).
    pub fn finish(mut self) -> io::Result<W> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        assert!(
            buckets.windows(2).all(|w| w[0].0 < w[1].0),
            "bucket names must be unique"
        );
        let mut root = Tree::default();
        for (name, pgid) in &buckets {
            let mut header = [0u8; BUCKET_HEADER_BYTES];
            header[..8].copy_from_slice(&pgid.to_le_bytes());
            root.push(&mut self, BUCKET_LEAF, name, &header)?;
        }
        let root = root.finish(&mut self)?;
        let high_water = self.pages;
        let mut head = vec![0u8; FIRST_TREE_PAGE as usize * PAGE_BYTES];
        // The freelist: no free pages.
        let at = |pgid: u64| pgid as usize * PAGE_BYTES;
        head[at(FREELIST_PGID)..][..PAGE_HEADER_BYTES].copy_from_slice(&page_header(
            FREELIST_PGID,
            FREELIST_PAGE,
            0,
            0,
        ));
        for (pgid, txid) in [(0u64, 0u64), (1, NEWEST_TXID)] {
            head[at(pgid)..][..PAGE_HEADER_BYTES]
                .copy_from_slice(&page_header(pgid, META_PAGE, 0, 0));
            let mut meta = Vec::with_capacity(META_SUMMED_BYTES + 8);
            meta.extend_from_slice(&MAGIC.to_le_bytes());
            meta.extend_from_slice(&VERSION.to_le_bytes());
            meta.extend_from_slice(&(PAGE_BYTES as u32).to_le_bytes());
            meta.extend_from_slice(&0u32.to_le_bytes()); // flags
            meta.extend_from_slice(&root.to_le_bytes()); // root bucket's root
            meta.extend_from_slice(&0u64.to_le_bytes()); // its sequence
            meta.extend_from_slice(&FREELIST_PGID.to_le_bytes());
            meta.extend_from_slice(&high_water.to_le_bytes());
            meta.extend_from_slice(&txid.to_le_bytes());
            debug_assert_eq!(meta.len(), META_SUMMED_BYTES);
            let sum = fnv1a64(&meta);
            meta.extend_from_slice(&sum.to_le_bytes());
            head[at(pgid) + PAGE_HEADER_BYTES..][..meta.len()].copy_from_slice(&meta);
        }
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&head)?;
        self.out
            .seek(SeekFrom::Start(high_water * PAGE_BYTES as u64))?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Appends `node` as one page plus overflow and returns its page id.
    fn write_node(&mut self, flags: u16, node: &Node) -> io::Result<u64> {
        let pgid = self.pages;
        let n = node.elements.len();
        let size = PAGE_HEADER_BYTES + n * ELEMENT_BYTES + node.data.len();
        let pages = size.div_ceil(PAGE_BYTES).max(1);
        let buf = &mut self.scratch;
        buf.clear();
        buf.resize(pages * PAGE_BYTES, 0);
        let count = u16::try_from(n).expect("Node::fits bounds a node's element count");
        let overflow = u32::try_from(pages - 1).expect("a node under 16 TiB");
        buf[..PAGE_HEADER_BYTES].copy_from_slice(&page_header(pgid, flags, count, overflow));
        let mut data_at = PAGE_HEADER_BYTES + n * ELEMENT_BYTES;
        for (i, e) in node.elements.iter().enumerate() {
            let at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
            // `pos` counts from the element itself.
            let pos = (data_at - at) as u32;
            let (k, v) = (e.key_len as u32, e.value_len as u32);
            if flags == LEAF_PAGE {
                buf[at..at + 4].copy_from_slice(&e.flags.to_le_bytes());
                buf[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
                buf[at + 8..at + 12].copy_from_slice(&k.to_le_bytes());
                buf[at + 12..at + 16].copy_from_slice(&v.to_le_bytes());
            } else {
                buf[at..at + 4].copy_from_slice(&pos.to_le_bytes());
                buf[at + 4..at + 8].copy_from_slice(&k.to_le_bytes());
                buf[at + 8..at + 16].copy_from_slice(&e.child.to_le_bytes());
            }
            data_at += e.key_len + e.value_len;
        }
        let data_start = PAGE_HEADER_BYTES + n * ELEMENT_BYTES;
        buf[data_start..data_start + node.data.len()].copy_from_slice(&node.data);
        self.out.write_all(buf)?;
        self.pages += pages as u64;
        Ok(pgid)
    }
}

/// One bucket being written (see [`DbWriter::bucket`]).
#[derive(Debug)]
pub struct BucketWriter<'a, W> {
    db: &'a mut DbWriter<W>,
    name: Vec<u8>,
    tree: Tree,
    last_key: Option<Vec<u8>>,
}

impl<W: Write + Seek> BucketWriter<'_, W> {
    /// Adds an item; keys must be strictly ascending. A full page of items
    /// is written out at once.
    ///
    /// # Errors
    /// Writing to the sink failed.
    ///
    /// # Panics
    /// If `key` is not greater than the previous key (a caller bug: bbolt's
    /// lookups would miss items).
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if let Some(last) = &mut self.last_key {
            assert!(&last[..] < key, "keys must be strictly ascending");
            last.clear();
            last.extend_from_slice(key);
        } else {
            self.last_key = Some(key.to_vec());
        }
        self.tree.push(self.db, 0, key, value)
    }

    /// Writes the bucket's last leaf and its branch levels, and records it
    /// in the database.
    ///
    /// # Errors
    /// Writing to the sink failed.
    pub fn finish(self) -> io::Result<()> {
        let root = self.tree.finish(self.db)?;
        self.db.buckets.push((self.name, root));
        Ok(())
    }
}

/// A tree being written: its leaf being filled and the first key and page
/// of each leaf written (a bucket's, or the root tree of bucket names).
#[derive(Debug, Default)]
struct Tree {
    leaf: Node,
    level: Vec<(Vec<u8>, u64)>,
}

impl Tree {
    /// Adds a leaf element, writing the leaf out first if it is full.
    fn push<W: Write + Seek>(
        &mut self,
        db: &mut DbWriter<W>,
        flags: u32,
        key: &[u8],
        value: &[u8],
    ) -> io::Result<()> {
        if !self.leaf.fits(key.len() + value.len()) {
            self.flush(db)?;
        }
        self.leaf.push(flags, key, value, 0);
        Ok(())
    }

    /// Writes the last leaf (an empty tree is one empty leaf) and the
    /// branch levels; returns the root's page.
    fn finish<W: Write + Seek>(mut self, db: &mut DbWriter<W>) -> io::Result<u64> {
        if !self.leaf.elements.is_empty() || self.level.is_empty() {
            self.flush(db)?;
        }
        branches(db, self.level)
    }

    fn flush<W: Write + Seek>(&mut self, db: &mut DbWriter<W>) -> io::Result<()> {
        let pgid = db.write_node(LEAF_PAGE, &self.leaf)?;
        self.level.push((self.leaf.first_key().to_vec(), pgid));
        self.leaf.clear();
        Ok(())
    }
}

/// Writes branch levels over `level` (the first key and page of each
/// node, at least one) up to a single root, and returns the root's page.
fn branches<W: Write + Seek>(
    db: &mut DbWriter<W>,
    mut level: Vec<(Vec<u8>, u64)>,
) -> io::Result<u64> {
    while level.len() > 1 {
        let mut up = Vec::new();
        let mut node = Node::default();
        for (key, pgid) in &level {
            if !node.fits(key.len()) {
                up.push((
                    node.first_key().to_vec(),
                    db.write_node(BRANCH_PAGE, &node)?,
                ));
                node.clear();
            }
            node.push(0, key, &[], *pgid);
        }
        up.push((
            node.first_key().to_vec(),
            db.write_node(BRANCH_PAGE, &node)?,
        ));
        level = up;
    }
    Ok(level[0].1)
}

/// One element of a node being filled.
#[derive(Clone, Copy, Debug)]
struct Element {
    flags: u32,
    key_len: usize,
    value_len: usize,
    child: u64,
}

/// A node being filled: its elements and their keys and values, back to
/// back. It fills one page; a single element larger than a page gets a
/// node of its own, with overflow pages.
#[derive(Debug, Default)]
struct Node {
    elements: Vec<Element>,
    data: Vec<u8>,
}

impl Node {
    /// Whether an element of `data` key and value bytes belongs in this
    /// node (an empty node takes any element).
    fn fits(&self, data: usize) -> bool {
        let n = self.elements.len();
        let used = PAGE_HEADER_BYTES + n * ELEMENT_BYTES + self.data.len();
        n == 0 || (used + ELEMENT_BYTES + data <= PAGE_BYTES && n < MAX_NODE_ELEMENTS)
    }

    fn push(&mut self, flags: u32, key: &[u8], value: &[u8], child: u64) {
        self.elements.push(Element {
            flags,
            key_len: key.len(),
            value_len: value.len(),
            child,
        });
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
    }

    fn first_key(&self) -> &[u8] {
        self.elements
            .first()
            .map_or(&[][..], |e| &self.data[..e.key_len])
    }

    fn clear(&mut self) {
        self.elements.clear();
        self.data.clear();
    }
}

/// A page header: id, flags, element count, overflow pages.
fn page_header(pgid: u64, flags: u16, count: u16, overflow: u32) -> [u8; PAGE_HEADER_BYTES] {
    let mut h = [0u8; PAGE_HEADER_BYTES];
    h[..8].copy_from_slice(&pgid.to_le_bytes());
    h[8..10].copy_from_slice(&flags.to_le_bytes());
    h[10..12].copy_from_slice(&count.to_le_bytes());
    h[12..16].copy_from_slice(&overflow.to_le_bytes());
    h
}
