//! Writing a bbolt database from sorted buckets in one pass.

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

/// Writes a database holding `buckets` (names strictly ascending), every
/// page full, no free pages. The result is a whole number of
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
    let mut w = Writer {
        out: vec![0; FIRST_TREE_PAGE as usize * PAGE_BYTES],
    };
    let mut root_items = Vec::with_capacity(buckets.len());
    for b in buckets {
        assert!(
            b.items.windows(2).all(|w| w[0].0 < w[1].0),
            "keys must be strictly ascending"
        );
        let items: Vec<Item<'_>> = b
            .items
            .iter()
            .map(|(k, v)| Item {
                flags: 0,
                key: k,
                value: v,
            })
            .collect();
        let root = w.tree(&items);
        let mut header = [0u8; BUCKET_HEADER_BYTES];
        header[..8].copy_from_slice(&root.to_le_bytes());
        root_items.push((b.name.as_slice(), header));
    }
    let items: Vec<Item<'_>> = root_items
        .iter()
        .map(|(name, header)| Item {
            flags: BUCKET_LEAF,
            key: name,
            value: header,
        })
        .collect();
    let root = w.tree(&items);
    let high_water = w.pages();
    // The freelist: no free pages.
    w.header(FREELIST_PGID, FREELIST_PAGE, 0, 0);
    for (pgid, txid) in [(0u64, 0u64), (1, NEWEST_TXID)] {
        w.header(pgid, META_PAGE, 0, 0);
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
        let at = pgid as usize * PAGE_BYTES + PAGE_HEADER_BYTES;
        w.out[at..at + meta.len()].copy_from_slice(&meta);
    }
    w.out
}

/// A leaf element to lay out.
struct Item<'a> {
    flags: u32,
    key: &'a [u8],
    value: &'a [u8],
}

struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// Pages written so far (the next page's id).
    fn pages(&self) -> u64 {
        (self.out.len() / PAGE_BYTES) as u64
    }

    /// Writes a page header at page `pgid`.
    fn header(&mut self, pgid: u64, flags: u16, count: u16, overflow: u32) {
        let at = pgid as usize * PAGE_BYTES;
        self.out[at..at + 8].copy_from_slice(&pgid.to_le_bytes());
        self.out[at + 8..at + 10].copy_from_slice(&flags.to_le_bytes());
        self.out[at + 10..at + 12].copy_from_slice(&count.to_le_bytes());
        self.out[at + 12..at + 16].copy_from_slice(&overflow.to_le_bytes());
    }

    /// Writes the tree of `items` (leaves, then branch levels up to one
    /// root) and returns the root's page id. An empty tree is one empty
    /// leaf page.
    fn tree(&mut self, items: &[Item<'_>]) -> u64 {
        // (first key, page id) of each node of the level just written.
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        for group in groups(items.iter().map(|i| i.key.len() + i.value.len())) {
            let node = &items[group];
            let pgid = self.node(LEAF_PAGE, node.len(), |i| {
                (node[i].flags, node[i].key, node[i].value, 0)
            });
            level.push((node.first().map_or_else(Vec::new, |i| i.key.to_vec()), pgid));
        }
        while level.len() > 1 {
            let mut up = Vec::new();
            for group in groups(level.iter().map(|(k, _)| k.len())) {
                let node = &level[group];
                let pgid = self.node(BRANCH_PAGE, node.len(), |i| (0, &node[i].0, &[], node[i].1));
                up.push((node[0].0.clone(), pgid));
            }
            level = up;
        }
        level[0].1
    }

    /// Appends one node of `n` elements (`element(i)` gives flags, key,
    /// value and, for a branch, the child page) as a page plus overflow.
    fn node<'a>(
        &mut self,
        flags: u16,
        n: usize,
        element: impl Fn(usize) -> (u32, &'a [u8], &'a [u8], u64),
    ) -> u64 {
        let pgid = self.pages();
        let start = self.out.len();
        let data: usize = (0..n)
            .map(|i| {
                let (_, k, v, _) = element(i);
                k.len() + v.len()
            })
            .sum();
        let size = PAGE_HEADER_BYTES + n * ELEMENT_BYTES + data;
        let pages = size.div_ceil(PAGE_BYTES).max(1);
        self.out.resize(start + pages * PAGE_BYTES, 0);
        let count = u16::try_from(n).expect("groups() bounds a node's element count");
        let overflow = u32::try_from(pages - 1).expect("a node under 16 TiB");
        self.header(pgid, flags, count, overflow);
        let mut data_at = PAGE_HEADER_BYTES + n * ELEMENT_BYTES;
        for i in 0..n {
            let (eflags, k, v, child) = element(i);
            let e = start + PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
            // `pos` counts from the element itself.
            let pos = (data_at - (PAGE_HEADER_BYTES + i * ELEMENT_BYTES)) as u32;
            let out = &mut self.out;
            if flags == LEAF_PAGE {
                out[e..e + 4].copy_from_slice(&eflags.to_le_bytes());
                out[e + 4..e + 8].copy_from_slice(&pos.to_le_bytes());
                out[e + 8..e + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
                out[e + 12..e + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            } else {
                out[e..e + 4].copy_from_slice(&pos.to_le_bytes());
                out[e + 4..e + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
                out[e + 8..e + 16].copy_from_slice(&child.to_le_bytes());
            }
            let d = start + data_at;
            out[d..d + k.len()].copy_from_slice(k);
            out[d + k.len()..d + k.len() + v.len()].copy_from_slice(v);
            data_at += k.len() + v.len();
        }
        pgid
    }
}

/// Splits elements of the given data sizes into nodes that each fill one
/// page (a single element larger than a page gets a node of its own, with
/// overflow pages). Always at least one (possibly empty) group.
fn groups(sizes: impl Iterator<Item = usize>) -> Vec<core::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut used = PAGE_HEADER_BYTES;
    let mut n = 0;
    for (i, s) in sizes.enumerate() {
        let need = ELEMENT_BYTES + s;
        if i > start && (used + need > PAGE_BYTES || i - start == usize::from(u16::MAX)) {
            out.push(start..i);
            start = i;
            used = PAGE_HEADER_BYTES;
        }
        used += need;
        n = i + 1;
    }
    out.push(start..n);
    out
}
