#!/usr/bin/env python3
"""Where the emulated CPU goes: fold a QEMU `-d exec,nochain,in_asm` log
into per-function counts of executed guest instructions.

usage: exec-profile.py ELF LOG [TOP] [CALLEE]

With CALLEE (a substring of a function name, e.g. `mem::memcpy`), also
print which functions' code ran just before each entry into CALLEE, with
the instructions CALLEE executed until control left it (its callers).

`in_asm` gives each translated block's length (instructions), `exec` one
line per block executed (`nochain` makes QEMU log every execution). A
function's weight is the sum over its blocks of executions x length; the
function of a block is the ELF symbol at or below its start PC
(`llvm-nm -n --demangle`).  See crates/firmware/README.md.
"""
import bisect
import collections
import re
import subprocess
import sys


# Legacy Rust mangling escapes llvm-nm leaves in place.
LEGACY = [("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$C$", ","), ("$u5b$", "["),
          ("$u5d$", "]"), ("$RF$", "&"), ("$BP$", "*"), ("$u7b$", "{"), ("$u7d$", "}"),
          ("$u27$", "'"), ("..", "::")]


def symbols(elf):
    out = subprocess.run(["llvm-nm", "-n", "--demangle", elf],
                         capture_output=True, text=True, check=True).stdout
    addrs, names = [], []
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW" and not parts[2].startswith(".L"):
            name = re.sub(r"::h[0-9a-f]{16}$", "", parts[2])
            for a, b in LEGACY:
                name = name.replace(a, b)
            addrs.append(int(parts[0], 16))
            names.append(name)
    return addrs, names


def main():
    elf, log = sys.argv[1], sys.argv[2]
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    length = {}  # block start PC -> instructions (last translation wins)
    execs = collections.Counter()
    order = []  # executed block PCs in order (only kept with CALLEE)
    callee = sys.argv[4] if len(sys.argv) > 4 else None
    exec_re = re.compile(rb"^Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")
    insn_re = re.compile(rb"^0x([0-9a-f]+):  ")
    block_pc, block_n = None, 0
    with open(log, "rb") as f:
        for line in f:
            m = exec_re.match(line)
            if m:
                pc = int(m.group(1), 16)
                execs[pc] += 1
                if callee:
                    order.append(pc)
                continue
            m = insn_re.match(line)
            if m:
                if block_pc is None:
                    block_pc = int(m.group(1), 16)
                block_n += 1
                continue
            if block_pc is not None and not line.strip():
                length[block_pc] = block_n
                block_pc, block_n = None, 0
            elif line.startswith(b"IN:"):
                block_pc, block_n = None, 0
    if block_pc is not None:
        length[block_pc] = block_n
    addrs, names = symbols(elf)

    def name_of(pc):
        i = bisect.bisect_right(addrs, pc) - 1
        return names[i] if i >= 0 else f"?{pc:#x}"

    insns = collections.Counter()
    blocks = collections.Counter()
    unknown_len = 0
    for pc, n in execs.items():
        i = bisect.bisect_right(addrs, pc) - 1
        name = names[i] if i >= 0 else f"?{pc:#x}"
        blocks[name] += n
        if pc not in length:
            unknown_len += n
        insns[name] += n * length.get(pc, 1)
    total_i = sum(insns.values())
    total_b = sum(blocks.values())
    print(f"{total_b} blocks, {total_i} guest instructions executed "
          f"({unknown_len} block executions of unknown length counted as 1)")
    print(f"{'insns %':>8} {'blocks %':>8}  function")
    for name, n in insns.most_common(top):
        print(f"{100 * n / total_i:8.1f} {100 * blocks[name] / total_b:8.1f}  {name[:110]}")
    if callee:
        callers = collections.Counter()
        prev, caller = None, None
        for pc in order:
            name = name_of(pc)
            if callee in name:
                if prev is not None and callee not in prev:
                    caller = prev
                callers[caller] += length.get(pc, 1)
            prev = name
        total_c = sum(callers.values())
        print(f"\n{callee}: {total_c} instructions ({100 * total_c / total_i:.1f} %), by caller")
        for name, n in callers.most_common(top):
            print(f"{100 * n / total_c:8.1f}  {str(name)[:110]}")


if __name__ == "__main__":
    main()
