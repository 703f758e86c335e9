//! Reading a bbolt database without trusting it.

use super::{
    fnv1a64, BoltError, BRANCH_PAGE, BUCKET_HEADER_BYTES, BUCKET_LEAF, ELEMENT_BYTES, LEAF_PAGE,
    MAGIC, META_SUMMED_BYTES, PAGE_HEADER_BYTES, VERSION,
};

/// Deepest tree followed (bbolt's trees are a few levels deep; a cycle in
/// a corrupted file stops here).
pub const MAX_DEPTH: usize = 32;
/// Smallest page size accepted.
const MIN_PAGE_BYTES: u32 = 1024;
/// Page size the meta pages are first looked for at (bbolt reads page 0's
/// meta at offset 16 whatever the page size; page 1 is one page later).
const META_OFFSET: usize = PAGE_HEADER_BYTES;

/// A valid database's view: its bytes, page size and root.
#[derive(Clone, Copy, Debug)]
pub struct Db<'a> {
    bytes: &'a [u8],
    page_bytes: usize,
    root: u64,
    /// Pages in use (bbolt's high water mark): `tx.Size()` is this times the
    /// page size.
    high_water: u64,
}

/// One leaf item: flags, key, value.
type Leaf<'a> = (u32, &'a [u8], &'a [u8]);
/// A bucket's items, (key, value) in key order, borrowed from the file.
pub type Items<'a> = Vec<(&'a [u8], &'a [u8])>;

impl<'a> Db<'a> {
    /// Checks the meta pages and picks the newest valid one.
    pub fn open(bytes: &'a [u8]) -> Result<Db<'a>, BoltError> {
        let meta0 = parse_meta(bytes, META_OFFSET);
        let page_bytes = match meta0 {
            Some(m) => m.page_bytes,
            // Page 0 is damaged: try page 1 at the usual sizes.
            None => [4096u32, 8192, 16384, 65536]
                .into_iter()
                .find(|ps| parse_meta(bytes, *ps as usize + META_OFFSET).is_some())
                .ok_or(BoltError::NoValidMeta)?,
        };
        if page_bytes < MIN_PAGE_BYTES || !page_bytes.is_power_of_two() {
            return Err(BoltError::PageSize(page_bytes));
        }
        let meta1 = parse_meta(bytes, page_bytes as usize + META_OFFSET)
            .filter(|m| m.page_bytes == page_bytes);
        let meta = match (meta0, meta1) {
            (Some(a), Some(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Some(m), None) | (None, Some(m)) => m,
            (None, None) => return Err(BoltError::NoValidMeta),
        };
        Ok(Db {
            bytes,
            page_bytes: page_bytes as usize,
            root: meta.root,
            high_water: meta.high_water,
        })
    }

    /// `tx.Size()`: pages in use times the page size.
    pub fn size(&self) -> u64 {
        self.high_water.saturating_mul(self.page_bytes as u64)
    }

    /// Every bucket of the root, in order, with its items in key order
    /// (nested buckets' items are skipped, as `ForEach` gives them with no
    /// value).
    pub fn buckets(&self) -> Result<Vec<(&'a [u8], Items<'a>)>, BoltError> {
        let mut roots = Vec::new();
        self.walk(self.root, 0, &mut 0, &mut |item| {
            roots.push(item);
            Ok(())
        })?;
        let mut out = Vec::with_capacity(roots.len());
        for (flags, name, value) in roots {
            if flags & BUCKET_LEAF == 0 {
                continue;
            }
            out.push((name, self.bucket_items(name, value)?));
        }
        Ok(out)
    }

    /// The items of the root's bucket `name`, if it exists.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Items<'a>>, BoltError> {
        let mut found = None;
        self.walk(self.root, 0, &mut 0, &mut |(flags, k, v)| {
            if flags & BUCKET_LEAF != 0 && k == name {
                found = Some(v);
            }
            Ok(())
        })?;
        found.map(|v| self.bucket_items(name, v)).transpose()
    }

    /// A bucket's items from its header (`value` in the parent).
    fn bucket_items(&self, name: &[u8], value: &'a [u8]) -> Result<Items<'a>, BoltError> {
        let Some(header) = value.get(..BUCKET_HEADER_BYTES) else {
            return Err(BoltError::BadBucket {
                name: String::from_utf8_lossy(name).into_owned(),
                len: value.len(),
            });
        };
        let root = u64_at(header, 0).unwrap_or(0);
        let mut items = Vec::new();
        let mut push = |(flags, k, v): Leaf<'a>| {
            if flags & BUCKET_LEAF == 0 {
                items.push((k, v));
            }
            Ok(())
        };
        if root == 0 {
            // An inline bucket: its leaf page follows the header.
            let page = &value[BUCKET_HEADER_BYTES..];
            leaf_items(page, 0, &mut push)?;
        } else {
            self.walk(root, 0, &mut 0, &mut push)?;
        }
        Ok(items)
    }

    /// The bytes of page `pgid` with its overflow pages.
    fn page(&self, pgid: u64) -> Result<&'a [u8], BoltError> {
        let oob = |what| BoltError::OutOfBounds { page: pgid, what };
        if pgid >= self.high_water {
            return Err(oob("page id"));
        }
        let start = usize::try_from(pgid)
            .ok()
            .and_then(|p| p.checked_mul(self.page_bytes))
            .ok_or(oob("page"))?;
        let head = self
            .bytes
            .get(start..start + PAGE_HEADER_BYTES)
            .ok_or(oob("page header"))?;
        let overflow = u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize;
        let len = overflow
            .checked_add(1)
            .and_then(|p| p.checked_mul(self.page_bytes))
            .ok_or(oob("overflow"))?;
        self.bytes
            .get(start..start.checked_add(len).ok_or(oob("overflow"))?)
            .ok_or(oob("overflow"))
    }

    /// Visits the leaf items of the tree rooted at `pgid`, in order.
    /// `visited` counts the pages read: more than the file holds means a
    /// page is referenced twice (garbage), which would otherwise multiply
    /// the work by the fan-out at every level.
    fn walk(
        &self,
        pgid: u64,
        depth: usize,
        visited: &mut u64,
        visit: &mut dyn FnMut(Leaf<'a>) -> Result<(), BoltError>,
    ) -> Result<(), BoltError> {
        *visited += 1;
        if *visited > self.high_water {
            return Err(BoltError::SharedPage { page: pgid });
        }
        if depth >= MAX_DEPTH {
            return Err(BoltError::TooDeep {
                page: pgid,
                depth: MAX_DEPTH,
            });
        }
        let page = self.page(pgid)?;
        let flags = u16::from_le_bytes([page[8], page[9]]);
        if flags & LEAF_PAGE != 0 {
            return leaf_items(page, pgid, visit);
        }
        if flags & BRANCH_PAGE == 0 {
            return Err(BoltError::PageType { page: pgid, flags });
        }
        let count = usize::from(u16::from_le_bytes([page[10], page[11]]));
        for i in 0..count {
            let e = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
            let child = u64_at(page, e + 8).ok_or(BoltError::OutOfBounds {
                page: pgid,
                what: "branch element",
            })?;
            self.walk(child, depth + 1, visited, visit)?;
        }
        Ok(())
    }
}

/// Visits the items of the leaf page `page` (a whole page with overflow, or
/// an inline bucket's page).
fn leaf_items<'a>(
    page: &'a [u8],
    pgid: u64,
    visit: &mut dyn FnMut(Leaf<'a>) -> Result<(), BoltError>,
) -> Result<(), BoltError> {
    let oob = |what| BoltError::OutOfBounds { page: pgid, what };
    let head = page.get(..PAGE_HEADER_BYTES).ok_or(oob("page header"))?;
    let flags = u16::from_le_bytes([head[8], head[9]]);
    if flags & LEAF_PAGE == 0 {
        return Err(BoltError::PageType { page: pgid, flags });
    }
    let count = usize::from(u16::from_le_bytes([head[10], head[11]]));
    for i in 0..count {
        let e = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
        let field = |at: usize| u32_at(page, e + at).ok_or(oob("leaf element"));
        let (eflags, pos, ksize, vsize) = (field(0)?, field(4)?, field(8)?, field(12)?);
        let k0 = e.checked_add(pos as usize).ok_or(oob("key"))?;
        let k1 = k0.checked_add(ksize as usize).ok_or(oob("key"))?;
        let v1 = k1.checked_add(vsize as usize).ok_or(oob("value"))?;
        let key = page.get(k0..k1).ok_or(oob("key"))?;
        let value = page.get(k1..v1).ok_or(oob("value"))?;
        visit((eflags, key, value))?;
    }
    Ok(())
}

/// A meta page's fields that matter here.
#[derive(Clone, Copy)]
struct Meta {
    page_bytes: u32,
    root: u64,
    high_water: u64,
    txid: u64,
}

/// The meta at `at`, if it has the magic, version 2 and a valid checksum.
fn parse_meta(bytes: &[u8], at: usize) -> Option<Meta> {
    let m = bytes.get(at..at.checked_add(META_SUMMED_BYTES + 8)?)?;
    let sum = u64_at(m, META_SUMMED_BYTES)?;
    if u32_at(m, 0)? != MAGIC || u32_at(m, 4)? != VERSION || fnv1a64(&m[..META_SUMMED_BYTES]) != sum
    {
        return None;
    }
    Some(Meta {
        page_bytes: u32_at(m, 8)?,
        root: u64_at(m, 16)?,
        high_water: u64_at(m, 40)?,
        txid: u64_at(m, 48)?,
    })
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
