#!/usr/bin/env python3
"""Resolve kernel modules and their dependencies, in load order, from an unpacked kernel package.

Usage: module-deps.py MODULES_DIR NAME...
  MODULES_DIR is lib/modules/<version> of the unpacked package.

Prints one line per module to load, "name relative/path.ko", dependencies before dependants and
otherwise in the order asked. A module built into the kernel is reported on stderr and skipped.

Debian's kernel packages do not ship modules.dep (depmod builds it at install time) and the build
host may have no kmod, so the dependencies are read from each module's own .modinfo ELF section,
which is what depmod reads too.
"""
import os
import struct
import sys


def normalize(name):
    # The kernel treats '-' and '_' in module names as the same character.
    return name.replace("-", "_")


def modinfo(path):
    """Return the key=value pairs of an ELF64 module's .modinfo section as a list of tuples."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a little-endian ELF64 module")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = []
    for i in range(shnum):
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize
        )
        sections.append((name, offset, size))
    strtab_off = sections[shstrndx][1]
    for name, offset, size in sections:
        end = data.index(b"\0", strtab_off + name)
        if data[strtab_off + name : end] == b".modinfo":
            fields = []
            for entry in data[offset : offset + size].split(b"\0"):
                if b"=" in entry:
                    key, _, value = entry.decode("utf-8", "replace").partition("=")
                    fields.append((key, value))
            return fields
    return []


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    root = sys.argv[1]
    wanted = [normalize(n) for n in sys.argv[2:]]

    paths = {}
    for dirpath, _dirs, files in os.walk(os.path.join(root, "kernel")):
        for file in files:
            if file.endswith(".ko"):
                rel = os.path.relpath(os.path.join(dirpath, file), root)
                paths[normalize(file[: -len(".ko")])] = rel
    if not paths:
        sys.exit(f"module-deps: no uncompressed .ko files under {root}/kernel")

    builtin = set()
    try:
        with open(os.path.join(root, "modules.builtin")) as f:
            builtin = {normalize(os.path.basename(line.strip())[: -len(".ko")]) for line in f}
    except FileNotFoundError:
        pass

    order, seen = [], set()

    def visit(name, chain):
        if name in seen:
            return
        if name in chain:
            sys.exit(f"module-deps: dependency cycle: {' -> '.join(chain + [name])}")
        if name in builtin:
            print(f"module-deps: {name} is built into the kernel, not loading it", file=sys.stderr)
            seen.add(name)
            return
        if name not in paths:
            sys.exit(f"module-deps: module {name} is neither in {root}/kernel nor built in")
        for key, value in modinfo(os.path.join(root, paths[name])):
            if key == "depends":
                for dep in filter(None, value.split(",")):
                    visit(normalize(dep), chain + [name])
        seen.add(name)
        order.append(name)

    for name in wanted:
        visit(name, [])
    for name in order:
        print(name, paths[name])


if __name__ == "__main__":
    main()
