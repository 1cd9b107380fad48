"""Archives attached to a message, as the headers plugin looks into them: which kind an
attachment is (by its first bytes, else its names or type), and the names of its
members, listed and never extracted. A zip's central directory is read as it is; a tar
is read as a stream, unpacked (gzip, bzip2, xz) only as far as a `Budget` shared by all
the archives of one message allows.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import tarfile
import zipfile
import zlib
from itertools import islice
from typing import IO

ZIP_TYPES = frozenset({"application/zip", "application/x-zip", "application/x-zip-compressed"})
TAR_TYPES = frozenset({"application/x-tar", "application/x-gtar", "application/x-ustar",
                       "application/x-compressed-tar"})
ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive
ZIP_END = b"PK\x05\x06"  # the end of central directory record
GZIP_MAGIC, BZIP2_MAGIC, XZ_MAGIC = b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"
PACKED_MAGIC = (GZIP_MAGIC, BZIP2_MAGIC, XZ_MAGIC)
# What zipfile, tarfile and the decompressors raise on damaged data.
DAMAGED_ARCHIVE = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, zlib.error, lzma.LZMAError,
                   EOFError, OSError, ValueError, NotImplementedError)


def base_name(name: str) -> str:
    """A file name without its directory (`/` or `\\`), lower-case, without trailing
    dots and spaces: `Invoice.EXE. ` and `docs\\invoice.exe` are `invoice.exe`."""
    return re.split(r"[/\\]", name)[-1].rstrip(". \t").lower()


def archive_kind(names: list[str], content_type: str, payload: bytes) -> str | None:
    """"zip" or "tar" when an attachment is one by its first bytes (whatever its name:
    Office documents and Java archives are zips too), else by one of its `names` or its
    declared type; "packed" for other gzip, bzip2 or xz data, which may be a tar."""
    if payload.startswith(ZIP_MAGIC):
        return "zip"
    if payload[257:262] == b"ustar":  # an uncompressed tar
        return "tar"
    names = [base_name(name) for name in names]
    if content_type in ZIP_TYPES or any(name.endswith(ZIP_SUFFIXES) for name in names):
        return "zip"
    if content_type in TAR_TYPES or any(name.endswith(TAR_SUFFIXES) for name in names):
        return "tar"
    if payload.startswith(PACKED_MAGIC):
        return "packed"
    return None


def zip_members(payload: bytes, most: int) -> list[str]:
    """The first `most` names in a zip archive's central directory; nothing is
    decompressed. An archive with more than one end record is corrupt: zip programs
    differ in which of the archives they show."""
    if payload.count(ZIP_END) > 1:
        raise zipfile.BadZipFile("more than one end of central directory record")
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        return [info.filename for info in islice(archive.infolist(), most)]


class Budget:
    """Bytes that may still be unpacked, shared by all the archives of a message."""

    def __init__(self, left: int) -> None:
        self.left = left


def tar_members(payload: bytes, most: int, budget: Budget) -> tuple[list[str], bool]:
    """The first `most` names in a tar archive (plain, gzip, bzip2 or xz), read as a
    stream, and whether it was read without using up `budget`: listing a compressed
    tar means unpacking it up to the last header read."""
    names: list[str] = []
    try:
        with tarfile.open(fileobj=_Capped(_decompressing(payload), budget), mode="r|") as archive:
            for member in archive:
                names.append(member.name)
                if len(names) >= most:
                    break
    except _LimitReached:
        return names, False
    return names, True


def _decompressing(payload: bytes) -> IO[bytes]:
    raw = io.BytesIO(payload)
    if payload.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw)
    if payload.startswith(BZIP2_MAGIC):
        return bz2.BZ2File(raw)
    if payload.startswith(XZ_MAGIC):
        return lzma.LZMAFile(raw)
    return raw


class _LimitReached(Exception):
    pass


class _Capped(io.RawIOBase):
    """A stream that takes what it reads from `budget`, and raises _LimitReached when
    there is more to read than is left."""

    def __init__(self, stream: IO[bytes], budget: Budget) -> None:
        self._stream, self._budget = stream, budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._budget.left <= 0:
            # Spent: only data beyond it is a limit reached, not the stream's end.
            if self._stream.read(1):
                raise _LimitReached()
            return 0
        count = self._stream.readinto(memoryview(buffer)[: self._budget.left])
        self._budget.left -= count
        return count
