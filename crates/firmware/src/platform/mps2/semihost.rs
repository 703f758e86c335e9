//! ARM semihosting: the guest asks the host (QEMU, started with
//! `-semihosting-config enable=on,target=native`) to carry out a file
//! operation by `BKPT 0xAB` with the operation in `r0` and a parameter
//! block's address in `r1`; the answer comes back in `r0`. QEMU's
//! `target=native` does each one as the plain host system call (`open`,
//! `lseek`, `read`, `write`) on the QEMU process's file descriptor before
//! the guest resumes. Without semihosting enabled the `BKPT` is a fault.
#![allow(unsafe_code)]

/// Operation numbers (Arm semihosting specification, v2).
const SYS_OPEN: usize = 0x01;
const SYS_WRITE: usize = 0x05;
const SYS_READ: usize = 0x06;
const SYS_SEEK: usize = 0x0a;
const SYS_FLEN: usize = 0x0c;
const SYS_GET_CMDLINE: usize = 0x15;
const SYS_EXIT: usize = 0x18;
/// `SYS_OPEN` mode "r+b": read and write an existing file, no truncation.
const MODE_READ_WRITE_BINARY: usize = 3;
/// `SYS_EXIT` reason `ADP_Stopped_ApplicationExit` (QEMU exits with 0).
const ADP_STOPPED_APPLICATION_EXIT: usize = 0x20026;

/// One semihosting call. `arg` is the parameter block's address (or, for
/// `SYS_EXIT` on a 32-bit core, the reason code itself).
fn call(op: usize, arg: usize) -> isize {
    let r: usize;
    // SAFETY: `BKPT 0xAB` traps to QEMU's semihosting, which reads (and
    // for reads writes) only the parameter block and the buffers it names,
    // all of which the callers keep alive and exclusively borrowed for the
    // call; the asm is not marked `nomem`, so the compiler assumes memory
    // may change.
    unsafe {
        core::arch::asm!("bkpt 0xab", inout("r0") op => r, in("r1") arg, options(nostack));
    }
    r as isize
}

/// The command line QEMU passes (`-semihosting-config …,arg=…`) into `buf`;
/// its length, or `None` if there is none or it does not fit.
pub fn cmdline(buf: &mut [u8]) -> Option<usize> {
    let mut block = [buf.as_mut_ptr() as usize, buf.len()];
    if call(SYS_GET_CMDLINE, block.as_mut_ptr() as usize) != 0 {
        return None;
    }
    // The host wrote the length (without its terminating NUL) back.
    (block[1] > 0 && block[1] < buf.len()).then_some(block[1])
}

/// Opens an existing host file for reading and writing; `path` ends with a
/// NUL byte (not counted by the host). A handle, or `None`.
pub fn open(path_nul: &[u8]) -> Option<usize> {
    let len = path_nul.len().checked_sub(1)?;
    if path_nul[len] != 0 {
        return None;
    }
    let block = [path_nul.as_ptr() as usize, MODE_READ_WRITE_BINARY, len];
    let h = call(SYS_OPEN, block.as_ptr() as usize);
    (h >= 0).then_some(h as usize)
}

/// The file's length in bytes, if known.
pub fn flen(handle: usize) -> Option<usize> {
    let block = [handle];
    let n = call(SYS_FLEN, block.as_ptr() as usize);
    (n >= 0).then_some(n as usize)
}

/// Moves the file position to `pos`.
pub fn seek(handle: usize, pos: usize) -> bool {
    let block = [handle, pos];
    call(SYS_SEEK, block.as_ptr() as usize) == 0
}

/// Reads `buf.len()` bytes at the file position; true if all were read.
pub fn read(handle: usize, buf: &mut [u8]) -> bool {
    let block = [handle, buf.as_mut_ptr() as usize, buf.len()];
    // The host answers the number of bytes it did *not* read.
    call(SYS_READ, block.as_ptr() as usize) == 0
}

/// Writes `buf` at the file position; true if all of it was written.
pub fn write(handle: usize, buf: &[u8]) -> bool {
    let block = [handle, buf.as_ptr() as usize, buf.len()];
    // The host answers the number of bytes it did *not* write.
    call(SYS_WRITE, block.as_ptr() as usize) == 0
}

/// Ends the emulator with exit status 0.
pub fn exit() {
    call(SYS_EXIT, ADP_STOPPED_APPLICATION_EXIT);
}
