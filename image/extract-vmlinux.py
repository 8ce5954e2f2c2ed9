#!/usr/bin/env python3
"""Extract the uncompressed ELF vmlinux from an x86 bzImage.

Usage: extract-vmlinux.py BZIMAGE OUTPUT

QEMU boots an ELF vmlinux through PVH, which is much more reliable under TCG than booting the
bzImage itself, and distributions ship only the bzImage. This is the classic scripts/extract-vmlinux
approach: find the compressed payload by its magic bytes and decompress it. The boot header's
payload_offset is tried first because it points straight at the payload; the magic-byte scan is the
fallback for kernels whose header does not carry it.
"""
import bz2
import gzip
import lzma
import shutil
import struct
import subprocess
import sys
import zlib

ELF_MAGIC = b"\x7fELF"


def gunzip(data):
    # A raw-deflate decompressor stops at the end of the stream and ignores what follows it
    # (the bzImage appends its own trailer), which gzip.decompress would reject.
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    return d.decompress(data)


def unxz(data):
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def unlzma(data):
    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)


def bunzip2(data):
    return bz2.BZ2Decompressor().decompress(data)


def external(*cmd):
    # Python's standard library has no zstd, lz4 or lzo; use the command-line tool if installed.
    def run(data):
        if shutil.which(cmd[0]) is None:
            raise RuntimeError(f"{cmd[0]} is not installed")
        # The tools complain about the trailing bytes after the frame but still write the output.
        return subprocess.run(cmd, input=data, capture_output=True).stdout

    return run


# Ordered like scripts/extract-vmlinux.
FORMATS = [
    ("gzip", b"\x1f\x8b\x08", gunzip),
    ("xz", b"\xfd7zXZ\x00", unxz),
    ("bzip2", b"BZh", bunzip2),
    ("lzma", b"\x5d\x00\x00\x00", unlzma),
    ("lzo", b"\x89LZO", external("lzop", "-dc")),
    ("lz4", b"\x02\x21\x4c\x18", external("lz4", "-dc")),
    ("zstd", b"\x28\xb5\x2f\xfd", external("zstd", "-dc")),
]


def try_at(data, offset):
    for name, magic, decompress in FORMATS:
        if data.startswith(magic, offset):
            try:
                out = decompress(data[offset:])
            except Exception:  # a false magic match decompresses to garbage or fails
                return None
            if out.startswith(ELF_MAGIC):
                return name, out
    return None


def header_payload_offset(data):
    # Boot protocol 2.08+: payload_offset (0x248) is relative to the protected-mode code, which
    # starts after the real-mode setup sectors.
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        return None
    (version,) = struct.unpack_from("<H", data, 0x206)
    if version < 0x0208:
        return None
    setup_sects = data[0x1F1] or 4
    (payload_offset,) = struct.unpack_from("<I", data, 0x248)
    return (setup_sects + 1) * 512 + payload_offset


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        data = f.read()

    found = None
    offset = header_payload_offset(data)
    if offset is not None:
        found = try_at(data, offset)
    if found is None:
        for _name, magic, _ in FORMATS:
            start = 0
            while found is None and (offset := data.find(magic, start)) != -1:
                found = try_at(data, offset)
                start = offset + 1
            if found:
                break
    if found is None:
        sys.exit(f"extract-vmlinux: no compressed ELF kernel found in {src}")

    name, vmlinux = found
    with open(dst, "wb") as f:
        f.write(vmlinux)
    print(f"{name} payload at offset {offset}, {len(vmlinux)} bytes")


if __name__ == "__main__":
    main()
