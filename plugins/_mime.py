"""What a message holds, as the headers plugin's rules see it: its header values as
text, the text of its text parts, the declared type of each part, the names of its
attachments and of the files inside its zip and tar archives.

The message is parsed with the standard library's `email` package in its compat32
policy, which keeps header values as they came and records what is wrong with a
message as defects instead of raising. Its feed parser is a copy (`_feedparser.py`)
that reads a field in RFC 5322's obsolete syntax (a space before its colon) as a field,
as mail programs do, where the email package's would end the header block. Everything
is bounded by `Limits`, so a hostile message costs bounded work. Before the parser sees
it, one linear pass over its lines (`survey`) finds what would make the parser slow: a
Content-Type or Content-Disposition field longer than `FIELD_BYTES` or with more than
`FIELD_PARAMETERS` parameters (the email package splits parameters in time that grows
with the square of their number) means the message is not parsed at all, its raw body
is its one text; the parser reads the message only up to its
`BOUNDARY_LINES_PER_PART * parts`-th delimiter line (one of a declared boundary) and
up to its `depth + 1`-th nested multipart (the parser checks each line against every
open boundary). At most `parts` parts are looked at, each text up to `text_bytes`;
archives are listed, never extracted (`_archives.py`), their unpacking shares one
budget per message, and archives inside archives are not opened.
"""

from __future__ import annotations

import binascii
import logging
import re
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.utils import collapse_rfc2231_value
from itertools import islice
from typing import Any, Callable, Iterator
from urllib.parse import unquote

from ._archives import DAMAGED_ARCHIVE, Budget, archive_kind, base_name, tar_members, zip_members
from ._feedparser import BytesParser

log = logging.getLogger("mailproxy.plugin.headers")

# A part takes one delimiter line, a multipart a closing one too.
BOUNDARY_LINES_PER_PART = 2
# Bigger Content-Type and Content-Disposition fields are an attack on the email
# package, not mail: a long RFC 2231 file name takes a quarter of this.
FIELD_BYTES = 4096
FIELD_PARAMETERS = 100  # the ";" in one field
# The limits that leave a part, an archive member or a whole message unlooked at: a
# message that reaches one is MIME_LIMIT (a text cut at max_text_bytes is not).
HIDING_LIMITS = frozenset({"max_parts", "max_depth", "abusive_field", "max_archive_bytes", "max_archive_members"})
# The text types whose decoded text body rules see; HTML as it is, tags and all.
TEXT_TYPES = frozenset({"text/plain", "text/html"})
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_NAME_PARAMETER = re.compile(r"""(?i)(?:file)?name(?:\*\d*)*\s*=\s*("[^"]*"|[^;\s]*)""")
_NAME_KEYS = frozenset({"filename", "name"})
# A line that is a Content-Type or Content-Disposition field with its folded lines, or
# that starts with "--". Linear: each alternative goes on only while it matches.
_FIELD_OR_DELIMITER = re.compile(
    rb"(?P<name>content-(?:type|disposition))[ \t]*:"
    rb"(?P<value>[^\r\n]*(?:(?:\r\n|\r|\n)[ \t][^\r\n]*)*)|--(?P<delimiter>[^\r\n]*)", re.IGNORECASE)
# How such a line starts, after the line break before it (lower case). Found with
# bytes.find, which skips through a message many times faster than a regular
# expression tries each line.
_LINE_STARTS = (b"\ncontent-", b"\rcontent-", b"\n--", b"\r--")
_WINDOW = 65536  # bytes of the message searched at a time
_BLANK_LINE = re.compile(rb"(?:^|\n)\r?\n")


class _kept:
    """A property worked out on first use and kept in the instance: what
    functools.cached_property does, without the lock it takes on each first use in
    Python 3.11 (a message's contents are read in one thread)."""

    def __init__(self, compute: Callable[[Any], Any]) -> None:
        self._compute = compute
        self._name = compute.__name__

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self._name] = self._compute(instance)
        return value


@dataclass(frozen=True, slots=True)
class Limits:
    parts: int  # parts looked at, the message itself the first
    text_bytes: int  # of each text part's decoded body, and of each header value
    archive_bytes: int  # an archive larger is not opened; all the message's tars are unpacked this far
    archive_members: int  # names listed per archive
    depth: int = 20  # multiparts inside one another


class MessageContents:
    """One message, parsed at once; each kind of content is read when a rule first
    asks for it. `defects` counts what the parser found wrong, `parse_failed` says it
    gave up and `parsed` whether the message was taken apart at all (when not, it is
    its headers and its raw body, one text; no part, type or name), `limits_hit` names
    the limits the message reached and `corrupt_archives` counts the archives that
    could not be read."""

    def __init__(self, message: bytes, limits: Limits) -> None:
        self._limits = limits
        self.limits_hit: set[str] = set()
        self.parse_failed = False
        self._unpack_budget = Budget(limits.archive_bytes)
        self._corrupt_archives = 0
        self._payloads: dict[int, bytes] = {}
        end, limit = survey(message, limits)
        if limit is not None:
            self.limits_hit.add(limit)
        parser = BytesParser(policy=policy.compat32)
        if limit == "abusive_field":
            self._not_parsed(parser, message)
            return
        try:
            self._root = parse(parser, message[:end])
            self._parts = list(islice(self._root.walk(), limits.parts + 1))
        except Exception as exc:  # meant never to raise, it does: TypeError on some
            # malformed RFC 2231 parameters (a boundary*0*=...)
            log.info("the message could not be parsed (%s: %s); matching its raw body",
                     type(exc).__name__, exc)
            self.parse_failed = True
            if isinstance(exc, RecursionError):
                # Messages inside message/rfc822 parts, nested past what the parser
                # can follow (the survey bounds multiparts only): a limit, as deeper
                # multiparts are, so that mime_limit decides, not unparsable.
                self.limits_hit.add("max_depth")
            self._not_parsed(parser, message)
            return
        self.parsed = True
        if len(self._parts) > limits.parts:
            self.limits_hit.add("max_parts")
            del self._parts[limits.parts:]

    def _not_parsed(self, parser: BytesParser, message: bytes) -> None:
        """The message as its headers (they are read as they are, whatever their
        parameters) and its raw body."""
        self.parsed = False
        self._root = parser.parsebytes(message, headersonly=True)
        self._parts = []
        blank = _BLANK_LINE.search(message)
        self._raw_body = message[blank.end():] if blank else b""

    @property
    def defects(self) -> int:
        return sum(len(part.defects) for part in self._parts)

    @property
    def limit_reached(self) -> bool:
        """Whether something of the message was left unlooked at by a limit (of the
        contents read so far: ask last)."""
        return not self.limits_hit.isdisjoint(HIDING_LIMITS)

    def header(self, name: str) -> list[str]:
        """Every value of the message's own header `name`, as text (see header_text)."""
        return [header_text(self._bounded(value)) for value in _raw_values(self._root, name)]

    @_kept
    def texts(self) -> list[str]:
        """The decoded text of every text/plain and text/html part (transfer encoding
        and charset undone), each up to `text_bytes` of it. A message not taken apart
        is one text: its raw body."""
        if not self.parsed:
            return [decoded(self._bounded(self._raw_body), None)]
        texts = []
        for index, (part, content_type) in enumerate(zip(self._parts, self.content_types)):
            if content_type in TEXT_TYPES:
                texts.append(decoded(self._bounded(self._payload(index)), _charset(part)))
        return texts

    @_kept
    def content_types(self) -> list[str]:
        """The declared type of every part, lower-case (text/plain where it is missing
        or malformed, as RFC 2045 says)."""
        return [part.get_content_type() for part in self._parts]

    @_kept
    def file_names(self) -> list[str]:
        """Every name each part gives itself (see _file_names), and the name of every
        file in the zip and tar archives among them; each without its directory,
        lower-case, without the trailing dots and spaces Windows ignores."""
        names = []
        for index, (part, content_type) in enumerate(zip(self._parts, self.content_types)):
            if part.is_multipart() and content_type.startswith("multipart/"):
                continue  # a container: its parts give their names
            own = _file_names(part)
            names += own
            if part.is_multipart():
                continue  # a message/* part names itself; the message inside is parts of its own
            payload = self._payload(index)
            kind = archive_kind(own, content_type, payload)
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
        """The names in an archive of `kind` ("zip", "tar", or "packed": gzip, bzip2
        or xz data that may be a tar, and is no finding when it is not)."""
        limits = self._limits
        if len(payload) > limits.archive_bytes:
            self.limits_hit.add("max_archive_bytes")
            return []
        most = limits.archive_members + 1  # one more, to tell that there are more
        try:
            if kind == "zip":
                names = zip_members(payload, most)
            else:
                names, complete = tar_members(payload, most, self._unpack_budget)
                if not complete:
                    self.limits_hit.add("max_archive_bytes")
        except DAMAGED_ARCHIVE:
            if kind != "packed":
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


# Two line ends in a row, as the parser splits lines (CRLF, or a CR or an LF alone):
# where a header block ends, if the parser ends it at its first empty line.
_END_OF_HEADER_BLOCK = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")


def parse(parser: BytesParser, data: bytes) -> Message:
    """`parser.parsebytes(data)`: the same message, in less time when it is neither a
    multipart nor a message/* (most mail). The parser makes the rest of such a message
    after its header block its payload, line by line; here the header block is parsed
    alone (see _plain_header_block) and the rest set as the payload in one piece, as
    the parser would have it. Anything else is parsed whole, and so is a message whose
    header block the parser ends before its first empty line (at a line that is no
    header field, which then starts the payload). `parser` must be a compat32 one: the
    header block read alone is a compat32 Message whatever the parser."""
    blank = _END_OF_HEADER_BLOCK.search(data)
    if blank is not None:
        block = data[: blank.end()]
        root = _plain_header_block(block) or parser.parsebytes(block, headersonly=True)
        try:
            empty = root.get_payload() == ""
        except Exception:  # a payload with non-ASCII bytes and an RFC 2231 charset*=: TypeError
            empty = False
        if empty and root.get_content_maintype() not in ("multipart", "message"):
            # Decoded as BytesParser decodes a whole message.
            root.set_payload(data[blank.end():].decode("ascii", errors="surrogateescape"))
            return root
    return parser.parsebytes(data)


# A line as the parser splits them: up to and with its CRLF, CR or LF.
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)")
# How the first line of a header field starts, as the parser tells one: a name of
# printable ASCII but the colon (RFC 5322 2.2), and the colon.
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+:")


def _plain_header_block(block: bytes) -> Message | None:
    """The message the parser makes of `block` (header fields, then the empty line that
    ends them) with `headersonly`, when every line is a field or a field's folded line:
    the fields as compat32 reads them, an empty payload. None for anything the parser
    reads otherwise (a first line that is folded, a "From " line, a line that is no
    field, no field at all): that is the parser's to read. The parser takes many
    Python calls for every line; mail's header blocks are tens of lines."""
    lines = _LINE.findall(block.decode("ascii", "surrogateescape"))
    if lines[0][0] in " \t":
        return None
    message = Message(policy=policy.compat32)
    field: list[str] = []
    for line in lines[:-1]:  # the last is the empty line
        if line[0] in " \t":
            field.append(line)
            continue
        if not _FIELD_NAME.match(line):  # a "From " line is none either
            return None
        if field:
            message.set_raw(*policy.compat32.header_source_parse(field))
        field = [line]
    message.set_raw(*policy.compat32.header_source_parse(field))
    message.set_payload("")
    return message


def survey(message: bytes, limits: Limits) -> tuple[int, str | None]:
    """How much of `message` the parser may read, and the limit that ended it there
    (None: all of it), in one linear pass over its lines: "abusive_field" (do not
    parse it at all), "max_parts" (up to its `BOUNDARY_LINES_PER_PART * parts + 1`-th
    delimiter line) or "max_depth" (up to the field that opens its `depth + 1`-th
    multipart inside the others).

    Every Content-Type field of a multipart (in any header, or in a text that looks
    like one) opens a boundary; a line "--boundary" of an open boundary is a
    delimiter and closes those opened after it, "--boundary--" it too. Where this
    guesses otherwise than the parser, it counts more nesting, never less."""
    opened: dict[bytes, int] = {}  # an open boundary: its place in `nesting`
    nesting: list[bytes | None] = []  # None: a boundary no line can close
    delimiters = 0
    for start in _candidate_lines(message):
        match = _FIELD_OR_DELIMITER.match(message, start)
        if match is None:
            continue  # "content-" but not one of the two fields
        value = match["value"]
        if value is not None:
            if len(value) > FIELD_BYTES or value.count(b";") > FIELD_PARAMETERS:
                return 0, "abusive_field"
            if match["name"].lower() == b"content-type" and b"multipart" in value.lower():
                boundary = _multipart_boundary(value)
                if boundary is not False:
                    if len(nesting) >= limits.depth:
                        return start, "max_depth"
                    if boundary is not None:
                        opened.setdefault(boundary, len(nesting))
                    nesting.append(boundary)
            continue
        line = match["delimiter"].rstrip(b" \t")
        closing = line not in opened and line.endswith(b"--")
        place = opened.get(line[:-2] if closing else line)
        if place is None:
            continue  # a text line that starts with "--"
        delimiters += 1
        if delimiters > BOUNDARY_LINES_PER_PART * limits.parts:
            return start, "max_parts"
        keep = place if closing else place + 1
        for index in range(keep, len(nesting)):
            if nesting[index] is not None and opened.get(nesting[index]) == index:
                del opened[nesting[index]]
        del nesting[keep:]
    return len(message), None


def _candidate_lines(message: bytes) -> Iterator[int]:
    """Where the lines that may be a Content-Type or Content-Disposition field or start
    with "--" begin, in order. The matches of the expression at them never overlap: a
    field's folded lines start with a space or a tab. Found window by window, so that
    survey() can stop early and a message of nothing but such lines costs no list of
    them all."""
    lowered = message.lower()
    if lowered.startswith((b"content-", b"--")):
        yield 0
    for low in range(0, len(lowered), _WINDOW):
        starts = []
        for needle in _LINE_STARTS:
            end = low + _WINDOW + len(needle) - 1  # the needle starts inside the window
            found = lowered.find(needle, low, end)
            while found != -1:
                starts.append(found + 1)  # the line after the break
                found = lowered.find(needle, found + 1, end)
        starts.sort()
        yield from starts


def _multipart_boundary(value: bytes) -> bytes | None | bool:
    """The boundary of a Content-Type field (its value, already bounded in size) as
    the parser reads it: False if it is not a multipart's, None if no line could match
    it."""
    field = Message()
    field["Content-Type"] = value.decode("ascii", "surrogateescape").lstrip(" \t")
    if field.get_content_maintype() != "multipart":
        return False
    try:
        boundary = field.get_boundary()
        return None if boundary is None else boundary.encode("ascii", "surrogateescape")
    except Exception:  # UnicodeEncodeError; or see _file_names: the parser gives up
        return None


def _charset(part: Message) -> str | None:
    try:
        return part.get_content_charset()
    except Exception:  # see _file_names
        return None


def _file_names(part: Message) -> list[str]:
    """Every name the part gives itself: each filename and name parameter of each of
    its Content-Disposition and Content-Type fields (mail programs differ in which
    they show), RFC 2231 and RFC 2047 decoded, a plain one and an RFC 2231 one both."""
    dispositions, types = [], []  # one pass over the fields for both
    for key, value in part.raw_items():
        key = key.lower()
        if key == "content-disposition":
            dispositions.append(value)
        elif key == "content-type":
            types.append(value)
    names = []
    for value in dispositions + types:
        names += _names_in(value)
    return names


def _names_in(value: str) -> list[str]:
    """The (file)name parameters of one field's `value`. The stdlib's RFC 2231 decoding
    raises on some malformed parameters (ValueError, TypeError): then each counts as
    written."""
    field = Message()
    if "=" in value.partition(";")[0]:
        # The disposition or type word left out: the parser takes the first item for it
        # (and does not decode it as RFC 2231), so one goes in front.
        value = "attachment; " + value
    field["Content-Disposition"] = value
    try:
        parameters = field.get_params(header="content-disposition")[1:]
        return [header_text(collapse_rfc2231_value(text).strip())
                for key, text in parameters if key in _NAME_KEYS]
    except Exception:
        return [unquote(text.strip().strip('"')) for text in _NAME_PARAMETER.findall(value)]


def _raw_values(part: Message, name: str) -> list[str]:
    """The values of header `name` as they came (compat32's `get` turns those with 8-bit
    bytes into Header objects that no longer say what the bytes were)."""
    name = name.lower()
    return [value for key, value in part.raw_items() if key.lower() == name]


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
        # Base64 as the email package decodes it: the padding the sender left out made
        # up. Two "=" make it up for any length, as decoding skips characters outside the
        # alphabet and stops at the first padding that completes a group.
        raw = binascii.a2b_base64(data + b"==") if encoding in "bB" else binascii.a2b_qp(data, header=True)
    except binascii.Error:
        return None
    return decoded(raw, charset)
