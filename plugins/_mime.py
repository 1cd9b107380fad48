"""What a message holds, as the headers plugin's rules see it: its header values as
text, the text of its text parts, the declared type of each part, the names of its
attachments and of the files inside its zip and tar archives.

The message is parsed with the standard library's `email` package in its compat32
policy, which keeps header values as they came and records what is wrong with a
message as defects instead of raising. Everything is bounded by `Limits`, so a hostile
message costs bounded work: the parser reads the message only up to its
`BOUNDARY_LINES_PER_PART * parts`-th line that starts with `--` (its time grows with
the number of parts, and with the square of their nesting), at most `parts` parts are
looked at, each text up to `text_bytes`; archives are listed, never extracted, and
archives inside archives are not opened.
"""

from __future__ import annotations

import binascii
import bz2
import gzip
import io
import logging
import lzma
import re
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser
from functools import cached_property
from itertools import islice
from typing import IO
from urllib.parse import unquote

log = logging.getLogger("mailproxy.plugin.headers")

# A part takes one delimiter line, a multipart a closing one too; the rest is room for
# text lines that happen to start with "--" (signatures, quoted replies).
BOUNDARY_LINES_PER_PART = 4
# The text types whose decoded text body rules see; HTML as it is, tags and all.
TEXT_TYPES = frozenset({"text/plain", "text/html"})
ZIP_TYPES = frozenset({"application/zip", "application/x-zip", "application/x-zip-compressed"})
TAR_TYPES = frozenset({"application/x-tar", "application/x-gtar", "application/x-ustar",
                       "application/x-compressed-tar"})
ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_NAME_PARAMETER = re.compile(r"""(?i)(?:file)?name(?:\*\d*)*\s*=\s*("[^"]*"|[^;\s]*)""")


@dataclass(frozen=True, slots=True)
class Limits:
    parts: int  # parts looked at, the message itself the first
    text_bytes: int  # of each text part's decoded body, and of each header value
    archive_bytes: int  # an archive larger is not opened; a compressed tar is read this far unpacked
    archive_members: int  # names listed per archive


class MessageContents:
    """One message, parsed at once; each kind of content is read when a rule first
    asks for it. `defects` counts what the parser found wrong, `parse_failed` says it
    gave up (the message is then one part: its headers and raw body), `limits_hit`
    names the limits the message reached and `corrupt_archives` counts the archives
    that could not be read."""

    def __init__(self, message: bytes, limits: Limits) -> None:
        self._limits = limits
        self.limits_hit: set[str] = set()
        self.parse_failed = False
        cut = _cut_before_line(message, b"--", BOUNDARY_LINES_PER_PART * limits.parts)
        if len(cut) < len(message):
            self.limits_hit.add("max_parts")
        parser = BytesParser(policy=policy.compat32)
        try:
            self._root = parser.parsebytes(cut)
            self._parts = list(islice(self._root.walk(), limits.parts + 1))
        except Exception as exc:  # meant never to raise, it does: RecursionError on deep
            # nesting, TypeError on some malformed RFC 2231 parameters (a boundary*0*=...)
            log.info("the message could not be parsed (%s: %s); matching its raw body",
                     type(exc).__name__, exc)
            self.parse_failed = True
            self._root = parser.parsebytes(message, headersonly=True)
            self._parts = [self._root]
        if len(self._parts) > limits.parts:
            self.limits_hit.add("max_parts")
            del self._parts[limits.parts:]
        self._corrupt_archives = 0
        self._payloads: dict[int, bytes] = {}

    @property
    def defects(self) -> int:
        return sum(len(part.defects) for part in self._parts)

    def header(self, name: str) -> list[str]:
        """Every value of the message's own header `name`, as text (see header_text)."""
        return [header_text(self._bounded(value)) for value in _raw_values(self._root, name)]

    @cached_property
    def texts(self) -> list[str]:
        """The decoded text of every text/plain and text/html part (transfer encoding
        and charset undone), each up to `text_bytes` of it. A message the parser gave
        up on is one text: its raw body."""
        if self.parse_failed:
            body = self._root.get_payload()
            raw = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else b""
            return [decoded(self._bounded(raw), None)]
        texts = []
        for index, (part, content_type) in enumerate(zip(self._parts, self.content_types)):
            if content_type in TEXT_TYPES:
                texts.append(decoded(self._bounded(self._payload(index)), _charset(part)))
        return texts

    @cached_property
    def content_types(self) -> list[str]:
        """The declared type of every part, lower-case (text/plain where it is missing
        or malformed, as RFC 2045 says)."""
        return [part.get_content_type() for part in self._parts]

    @cached_property
    def file_names(self) -> list[str]:
        """The name of every part that has one (RFC 2231 and RFC 2047 decoded), and of
        every file in the zip and tar archives among them; each without its directory,
        lower-case, without the trailing dots and spaces Windows ignores."""
        names = []
        for index, (part, content_type) in enumerate(zip(self._parts, self.content_types)):
            if part.is_multipart():
                continue
            own = _file_names(part)
            names += own
            payload = self._payload(index)
            kind = archive_kind(own[0] if own else "", content_type, payload)
            if kind is not None:
                names += self._archive_members(kind, payload)
        return [base_name(name) for name in names]

    def _payload(self, index: int) -> bytes:
        """The decoded body of part `index`: decoded once, for the texts and the names."""
        payload = self._payloads.get(index)
        if payload is None:
            payload = self._payloads[index] = self._parts[index].get_payload(decode=True) or b""
        return payload

    @property
    def corrupt_archives(self) -> int:
        self.file_names  # noqa: B018 - lists the archives, counting the corrupt ones
        return self._corrupt_archives

    def _archive_members(self, kind: str, payload: bytes) -> list[str]:
        limits = self._limits
        if len(payload) > limits.archive_bytes:
            self.limits_hit.add("max_archive_bytes")
            return []
        most = limits.archive_members + 1  # one more, to tell that there are more
        try:
            if kind == "zip":
                names = zip_members(payload, most)
            else:
                names, complete = tar_members(payload, most, limits.archive_bytes)
                if not complete:
                    self.limits_hit.add("max_archive_bytes")
        except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, zlib.error, lzma.LZMAError,
                EOFError, OSError, ValueError, NotImplementedError):
            # What zipfile, tarfile and the decompressors raise on damaged data.
            self._corrupt_archives += 1
            return []
        if len(names) > limits.archive_members:
            self.limits_hit.add("max_archive_members")
            del names[limits.archive_members:]
        return names

    def _bounded(self, data: bytes | str) -> bytes | str:
        """`data` up to `text_bytes` of it."""
        limit = self._limits.text_bytes
        if len(data) <= limit:
            return data
        self.limits_hit.add("max_text_bytes")
        return data[:limit]


def _charset(part: Message) -> str | None:
    try:
        return part.get_content_charset()
    except Exception:  # see _file_names
        return None


def _file_names(part: Message) -> list[str]:
    """The part's file name (Content-Disposition's filename, else Content-Type's name),
    RFC 2231 and RFC 2047 decoded. The stdlib's RFC 2231 decoding raises on some
    malformed parameters (ValueError, TypeError): then every (file)name parameter's
    value counts, as written."""
    try:
        name = part.get_filename()
    except Exception:
        raw = " ; ".join(_raw_values(part, "content-disposition") + _raw_values(part, "content-type"))
        return [unquote(value.strip().strip('"')) for value in _NAME_PARAMETER.findall(raw)]
    return [header_text(name)] if name else []


def _raw_values(part: Message, name: str) -> list[str]:
    """The values of header `name` as they came (compat32's `get` turns those with 8-bit
    bytes into Header objects that no longer say what the bytes were)."""
    name = name.lower()
    return [value for key, value in part.raw_items() if key.lower() == name]


def _cut_before_line(message: bytes, prefix: bytes, count: int) -> bytes:
    """`message` up to the start of its `count + 1`-th line that begins with `prefix`."""
    position = -1
    for _ in range(count + 1):
        position = message.find(b"\n" + prefix, position + 1)
        if position < 0:
            return message
    return message[: position + 1]


def decoded(data: bytes, charset: str | None) -> str:
    """`data` as text in `charset`; UTF-8 when none is given or it is unknown (ASCII is
    a part of it). Bytes that do not decode become U+FFFD."""
    try:
        return data.decode(charset or "utf-8", "replace")
    except (LookupError, ValueError):  # unknown, or a codec that is not a text encoding
        return data.decode("utf-8", "replace")


def header_text(value: str) -> str:
    """A header value as text: unfolded; raw UTF-8 (as SMTPUTF8 mail has it) read as
    such; encoded words (RFC 2047) decoded, the space between two of them dropped. An
    encoded word that does not decode stays as it is."""
    value = _FOLD.sub("", value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    pieces, end = [], 0
    for match in _ENCODED_WORD.finditer(value):
        between = value[end:match.start()]
        if not (end and between.strip(" \t") == "" and pieces):
            pieces.append(between)
        text = _encoded_word(*match.groups())
        pieces.append(match.group(0) if text is None else text)
        end = match.end()
    pieces.append(value[end:])
    return "".join(pieces)


def _encoded_word(charset: str, encoding: str, text: str) -> str | None:
    charset = charset.partition("*")[0]  # RFC 2231 adds a language: utf-8*en
    data = text.encode("ascii", "replace")
    try:
        if encoding in "bB":
            raw = binascii.a2b_base64(data + b"=" * (-len(data) % 4))
        else:
            raw = binascii.a2b_qp(data, header=True)
    except (binascii.Error, ValueError):
        return None
    return decoded(raw, charset)


def base_name(name: str) -> str:
    """A file name without its directory (`/` or `\\`), lower-case, without trailing
    dots and spaces: `Invoice.EXE. ` and `docs\\invoice.exe` are `invoice.exe`."""
    return re.split(r"[/\\]", name)[-1].rstrip(". \t").lower()


def archive_kind(name: str, content_type: str, payload: bytes) -> str | None:
    """"zip" or "tar" when an attachment is one by its first bytes (whatever its name:
    Office documents and Java archives are zips too), else by its name or its declared
    type."""
    if payload.startswith(ZIP_MAGIC):
        return "zip"
    if payload[257:262] == b"ustar":  # an uncompressed tar
        return "tar"
    lower = name.lower()
    if lower.endswith(ZIP_SUFFIXES) or content_type in ZIP_TYPES:
        return "zip"
    if lower.endswith(TAR_SUFFIXES) or content_type in TAR_TYPES:
        return "tar"
    return None


def zip_members(payload: bytes, most: int) -> list[str]:
    """The first `most` names in a zip archive's central directory; nothing is
    decompressed."""
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        return [info.filename for info in islice(archive.infolist(), most)]


def tar_members(payload: bytes, most: int, unpacked_limit: int) -> tuple[list[str], bool]:
    """The first `most` names in a tar archive (plain, gzip, bzip2 or xz), read as a
    stream, and whether it was read without reaching `unpacked_limit` bytes unpacked:
    listing a compressed tar means unpacking it up to the last header read."""
    names: list[str] = []
    try:
        with tarfile.open(fileobj=_Capped(_decompressing(payload), unpacked_limit), mode="r|") as archive:
            for member in archive:
                names.append(member.name)
                if len(names) >= most:
                    break
    except _LimitReached:
        return names, False
    return names, True


def _decompressing(payload: bytes) -> IO[bytes]:
    raw = io.BytesIO(payload)
    if payload.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw)
    if payload.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if payload.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


class _LimitReached(Exception):
    pass


class _Capped(io.RawIOBase):
    """A stream that raises _LimitReached when asked for more than `limit` bytes."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._stream, self._left = stream, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._left <= 0:
            raise _LimitReached()
        count = self._stream.readinto(memoryview(buffer)[: self._left])
        self._left -= count
        return count
