//! The firmware's `.text` stays within its budget (`firmware::TEXT_BUDGET_BYTES`,
//! 192 KiB) at the release profile: a feature that does not fit must find
//! its room elsewhere, not raise the budget. Prints the figure quoted in
//! the firmware README (`-- --nocapture`).

use metalraft_fw::firmware::{self, section_bytes, TEXT_BUDGET_BYTES};

#[test]
fn firmware_text_fits_the_budget() {
    let elf =
        firmware::build().expect("firmware builds (needs the riscv32imac-unknown-none-elf target)");
    let text = section_bytes(&elf, ".text").expect(".text of the ELF");
    eprintln!(
        "MEASURE firmware .text: {text} bytes of {TEXT_BUDGET_BYTES} ({} bytes of headroom)",
        TEXT_BUDGET_BYTES as i64 - text as i64
    );
    assert!(
        text <= TEXT_BUDGET_BYTES,
        "firmware .text is {text} bytes, above the {TEXT_BUDGET_BYTES}-byte budget"
    );
    // The reader is not fooled: the ELF has a non-empty .rodata and no such
    // section as .nonexistent.
    assert!(section_bytes(&elf, ".rodata").unwrap() > 0);
    assert!(section_bytes(&elf, ".nonexistent").is_err());
}
