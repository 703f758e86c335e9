//! Regressions found by fuzzing (`fuzz/`, target `fw_disk`), each named
//! after the bug with a `postmortem:` note.

use std::cell::RefCell;
use std::rc::Rc;

use metalraft_core::{Config, LogStorage, Node, Role};
use metalraft_fw_proto::disk::{LOG_START_SECTOR, SECTOR_BYTES};
use metalraft_fw_store::{BlockDevice, DiskError, DiskLog, StoreError};

/// A disk whose writes are durable at once, shared so that it can be
/// recovered again after a node used it.
#[derive(Clone)]
struct MemDisk(Rc<RefCell<Vec<u8>>>);

impl BlockDevice for MemDisk {
    fn sectors(&self) -> u64 {
        (self.0.borrow().len() / SECTOR_BYTES) as u64
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let start = sector as usize * SECTOR_BYTES;
        let img = self.0.borrow();
        let src = img
            .get(start..start + buf.len())
            .ok_or(DiskError::OutOfRange)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        let start = sector as usize * SECTOR_BYTES;
        let mut img = self.0.borrow_mut();
        let dst = img
            .get_mut(start..start + buf.len())
            .ok_or(DiskError::OutOfRange)?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(())
    }
}

/// postmortem: found by the `fw_disk` fuzz target (a fresh disk with a
/// 17-sector ring, 14 proposals). The ring-full check only looked for a
/// wrapped record that would end past the first live record's sector
/// (`at < start`); when the ring wrapped exactly onto that sector
/// (`at == start`), the new record overwrote entry 1. Recovery then found
/// no chain from the ring's start while the durable commit index covered
/// it: `CorruptBelowCommit`, a node that lost committed entries it had
/// acknowledged. Fix: writing at the first live record's sector is "log
/// full" too.
#[test]
fn fw_store_bug_01_ring_wrapping_onto_the_first_live_record_is_full() {
    let ring_sectors = 17;
    let img = vec![0u8; (LOG_START_SECTOR + ring_sectors) as usize * SECTOR_BYTES];
    let disk = MemDisk(Rc::new(RefCell::new(img)));
    let (log, _, _) = DiskLog::open(disk.clone(), &[1]).expect("fresh disk");
    let mut node = Node::new(Config::new(1), log, 0).expect("valid");
    node.campaign().expect("single voter");
    let mut full = false;
    for round in 0..64u8 {
        if round > 0 && node.role() == Role::Leader {
            node.propose(vec![round; 40]).expect("leader");
        }
        while node.has_ready() {
            let mut rd = node.ready().expect("ready");
            let Some(p) = rd.take_persist() else { continue };
            match node.storage_mut().persist(&p) {
                Ok(_) => node.on_persisted(p.into_token()).expect("in order"),
                Err(StoreError::LogFull) => full = true,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        if full {
            break;
        }
    }
    assert!(full, "a 17-sector ring fills up within 64 entries");
    let persisted = node.persisted_index();
    drop(node);
    let (again, _, _) = DiskLog::open(disk, &[1]).expect("what was persisted recovers");
    assert!(again.last_index().expect("last") >= persisted);
}
