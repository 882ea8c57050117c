"""A checkpoint's digest: taken as `torch.save` writes the file, at no extra pass, and checked on resume.

torch's zip writer computes the CRC-32 of every record's data while it writes it. A large write is such
data (a tensor's storage): only its place is noted, and its CRC-32 read back from the zip directory once the
file is complete. Every other byte (headers, the pickle, small tensors, the zip directory holding those
CRC-32s) goes into a SHA-256. Together they cover every byte, so a flipped bit anywhere shows. When torch is
told not to compute CRC-32s, every byte goes into the SHA-256 instead.

In the manifest: `"sha256"` (of every byte outside the listed records, in order) and `"record_crc32"`
(`[offset, length, crc32]` of each large write).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

RECORD_CHECKED = 64 << 10  # writes this large are record data, checked by the CRC-32 torch computes
_READ_CHUNK = 16 << 20
_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field


class DigestingFile:
    """The file `torch.save` writes to: passes every byte on and takes the digest on the way."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.records: list[tuple[int, int]] = []  # (offset, length) of large writes, checked by CRC-32
        self._by_records = _torch_computes_crc32()

    def write(self, data: Any) -> int:
        view = data if type(data) is memoryview else memoryview(data)
        size = view.nbytes
        if self._by_records and size >= RECORD_CHECKED:
            self.records.append((self.size, size))
        else:
            self.sha256.update(view)
        self.size += size
        return self.file.write(view)

    def flush(self) -> None:
        self.file.flush()

    def manifest_entries(self, path: Path) -> dict[str, Any]:
        """The digest of the complete file at `path` (what this object wrote), for its manifest."""
        return {"sha256": self.sha256.hexdigest(), "record_crc32": _record_crc32s(path, self.records)}


def matches(path: Path, manifest: dict[str, Any]) -> bool:
    """Every byte of `path` against its manifest, in one read."""
    records = manifest.get("record_crc32", [])
    sha256 = hashlib.sha256()
    position = 0
    with open(path, "rb") as file:
        for offset, length, crc in sorted(records):
            if offset < position:
                return False
            _read(file, position, offset - position, sha256.update)
            if _crc32_of(file, offset, length) != crc:
                return False
            position = offset + length
        _read(file, position, os.fstat(file.fileno()).st_size - position, sha256.update)
    return sha256.hexdigest() == manifest["sha256"]


def _torch_computes_crc32() -> bool:
    try:
        from torch.utils.serialization import config
    except ImportError:  # torch before 2.6 always computes them
        return True
    return bool(getattr(config.save, "compute_crc32", True))


def _record_crc32s(path: Path, written: list[tuple[int, int]]) -> list[list[int]]:
    """[offset, length, CRC-32] of each large write: the CRC-32 torch stored for the record whose data starts
    there (read from the zip directory, a small read); computed here for a write that is no record's data."""
    crc_at: dict[tuple[int, int], int] = {}
    with open(path, "rb") as file, zipfile.ZipFile(file) as archive:
        for record in archive.infolist():
            file.seek(record.header_offset)
            header = file.read(_LOCAL_HEADER)
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            data_offset = record.header_offset + _LOCAL_HEADER + name_length + extra_length
            crc_at[(data_offset, record.file_size)] = record.CRC
        checked = []
        for offset, length in written:
            crc = crc_at.get((offset, length))
            checked.append([offset, length, crc if crc is not None else _crc32_of(file, offset, length)])
    return checked


def _crc32_of(file: IO[bytes], offset: int, length: int) -> int:
    crc = 0

    def add(chunk: bytes) -> None:
        nonlocal crc
        crc = zlib.crc32(chunk, crc)

    _read(file, offset, length, add)
    return crc


def _read(file: IO[bytes], offset: int, length: int, consume: Any) -> None:
    """Hand `length` bytes of `file` from `offset` to `consume`, in chunks."""
    file.seek(offset)
    while length > 0:
        chunk = file.read(min(length, _READ_CHUNK))
        if not chunk:
            raise EOFError(f"the file ends before byte {offset + length}")
        consume(chunk)
        length -= len(chunk)
