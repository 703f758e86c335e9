//! Test fixtures shared by the store's integration tests.

use std::cell::RefCell;
use std::rc::Rc;

use metalraft_fw_proto::disk::SECTOR_BYTES;
use metalraft_fw_store::{BlockDevice, DiskError};

/// A disk in RAM whose writes are durable at once, shared (cloned) so
/// that it can be recovered again after a node used it.
#[derive(Clone)]
pub struct MemDisk(pub Rc<RefCell<Vec<u8>>>);

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
