"""What the headers plugin makes of a message at the edges of its MIME survey and
decoding: header values decoded as mail programs show them, the bounds on fields,
texts, archives, parts and nesting respected exactly, line starts found wherever they
fall in the message, and lines that only look like fields or delimiters not counted."""

from __future__ import annotations

import pytest

import mailproxy_plugins._mime as _mime
from tests.unit.test_plugin_headers import (
    ABUSIVE, GTUBE, LIMITED, REJECTED, attachment, checks, load, mime, nested, refusal, scan, tar_of, text, zip_of,
)

NOT_PARSED = (None, {"GTUBE": 2.0, "MIME_LIMIT": 3.0})  # its raw body matched, and a limit reached
PARSED = (None, {"GTUBE": 2.0})


def limits(parts: int = 100, depth: int = 20) -> _mime.Limits:
    return _mime.Limits(parts, text_bytes=100, archive_bytes=100_000, archive_members=10, depth=depth)


def multipart(*parts: bytes, boundary: bytes = b"inner", closed: bool = True) -> bytes:
    """A nested multipart/alternative part of `parts`, with or without its closing line."""
    head = b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n\r\n'
    body = b"".join(b"--" + boundary + b"\r\n" + part for part in parts)
    return head + body + (b"--" + boundary + b"--\r\n" if closed else b"")


# --- header values -----------------------------------------------------------------------


@pytest.mark.parametrize("value, shown", [
    # Base64 words whose "=" padding the sender left off: two, one, and two again.
    ("=?utf-8?b?U2FsZQ?=", "Sale"),
    ("=?utf-8?b?UGlsbHM?=", "Pills"),
    ("=?utf-8?b?dmlhZ3JhIQ?=", "viagra!"),
    ("=?utf-8?b?U2FsZQ==?=", "Sale"),
    ("=?utf-8?b?U2FsZQ...?=", "Sale"),  # characters that are no base64 are skipped
    ("=?utf-8?b?dmlhZ3JhIQ.?=", "viagra!"),  # ... and do not count towards the padding
    ("=?utf-8?b?dmlhZ3JhIQ==AAA?=", "viagra!"),  # what follows the padding is not read
    # Decoded in the word's own charset, also with an RFC 2231 language after it.
    ("=?iso-8859-1?q?Gr=FC=DFe?=", "Gr\u00fc\u00dfe"),
    ("=?ISO-8859-1*de?Q?Gr=FC=DFe?=", "Gr\u00fc\u00dfe"),
    # The text between two words is kept; only the space between adjacent ones goes.
    ("=?utf-8?q?Cheap?= pills from =?utf-8?q?Canada?=", "Cheap pills from Canada"),
    ("=?utf-8?q?Via?= =?utf-8?q?gra?=", "Viagra"),
    # A word that does not decode (one base64 character is no byte) stays as written.
    ("=?utf-8?b?U?= viagra", "=?utf-8?b?U?= viagra"),
])
def test_a_header_value_reads_as_mail_programs_show_it(value, shown):
    assert _mime.header_text(value) == shown


def test_a_header_rule_sees_an_undecodable_word_as_it_was_written():
    rule = {"symbol": "BROKEN_WORD", "header": "Subject", "pattern": r"^=\?utf-8\?b\?U\?= pills$", "action": 1.0}
    message = b"Subject: =?utf-8?b?U?= pills\r\n\r\nHello.\r\n"
    assert scan(load(rules=[rule]), message) == (None, {"BROKEN_WORD": 1.0})


@pytest.mark.parametrize("word", ["filename", "name"])
def test_a_disposition_word_that_reads_like_a_name_parameter_is_no_name(word):
    # The first item of the field is its disposition, not a parameter, whatever it says.
    contents = _mime.MessageContents(mime(text(), attachment(None, disposition=word)), limits())
    assert contents.file_names == []


# --- texts -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [99, 100, 101])
def test_a_text_is_counted_as_cut_only_when_it_is_longer_than_max_text_bytes(size):
    # The max_text_bytes count tells the administrator that a rule missed an end of
    # text; a text that fits whole must not be counted.
    message = mime(text(b"x" * (size - 1) + b"y\r\n"))
    plugin = load(rules=[{"symbol": "TEXT_END", "body": "y$", "action": 1.0}], max_text_bytes=100)
    hit = checks("limit", "max_text_bytes")
    assert scan(plugin, message) == (None, {} if size > 100 else {"TEXT_END": 1.0})
    assert checks("limit", "max_text_bytes") - hit == (size > 100)


# --- archives ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, pack", [("files.zip", zip_of), ("files.tgz", tar_of)])
def test_an_archive_of_exactly_max_archive_members_is_no_limit(name, pack):
    # Every name was looked at: nothing is hidden.
    archive = pack({"a.txt": b"a", "b.txt": b"b", "c.txt": b"c"})
    assert scan(load(max_archive_members=3), mime(text(), attachment(name, archive))) == (None, {})
    assert scan(load(max_archive_members=2), mime(text(), attachment(name, archive))) == LIMITED


def test_damage_past_the_members_listed_does_not_hide_them():
    # The listing stops at the first member past max_archive_members: a plain tar cut
    # short inside a later member still shows the .exe before it.
    whole = tar_of({"setup.exe": b"MZ", "big.bin": bytes(10_000), "after.txt": b"x"}, "w")
    cut = whole[:3000]  # two headers, and a part of big.bin's data
    assert refusal(load(max_archive_members=1), mime(text(), attachment("files.tar", cut))) == REJECTED


def test_each_corrupt_archive_of_a_message_is_counted():
    broken = attachment("broken.zip", b"PK\x03\x04" + b"\x00" * 200)
    contents = _mime.MessageContents(mime(text(), broken, broken, attachment("docs.zip", zip_of({"a": b""}))),
                                     limits())
    assert contents.corrupt_archives == 2


# --- abusive fields ----------------------------------------------------------------------


def disposition(value_bytes: int, semicolons: int) -> bytes:
    """An attachment whose Content-Disposition value (everything after the colon) is
    `value_bytes` long, with `semicolons` parameters."""
    value = b" attachment" + b"; a=1" * (semicolons - 1) + b'; filename="'
    return b"Content-Disposition:" + value + b"n" * (value_bytes - len(value) - 1) + b'"\r\n\r\nhello\r\n'


@pytest.mark.parametrize("value_bytes, semicolons, expected", [
    (_mime.FIELD_BYTES, 10, PARSED),
    (_mime.FIELD_BYTES + 1, 10, NOT_PARSED),
    (1000, _mime.FIELD_PARAMETERS, PARSED),
    (1000, _mime.FIELD_PARAMETERS + 1, NOT_PARSED),
])
def test_a_field_is_abusive_only_beyond_its_bounds(value_bytes, semicolons, expected):
    # The bounds are the documented 4 KiB and 100 parameters, to the byte.
    assert (_mime.FIELD_BYTES, _mime.FIELD_PARAMETERS) == (4096, 100)
    message = mime(text(GTUBE + b"\r\n"), disposition(value_bytes, semicolons))
    assert scan(load(gtube=2.0), message) == expected


FIELD = b"Content-Type: " + ABUSIVE + b"\r\n"


@pytest.mark.parametrize("message", [
    # In the first line, after a leading bare line feed (no header: all body).
    b"\n" + FIELD + b"\r\n" + GTUBE + b"\r\n",
    b"\r" + FIELD + b"\r\n" + GTUBE + b"\r\n",
    # After a signature separator and other text lines that start with "--".
    mime(text(GTUBE + b"\r\n-- \r\nJohn\r\n"), FIELD + b"\r\nhello\r\n"),
    mime(text(b"--\r\n---- quoted ----\r\n" + GTUBE + b"\r\n"), FIELD + b"\r\nhello\r\n"),
])
def test_an_abusive_field_is_found_wherever_its_line_is(message):
    assert scan(load(gtube=2.0), message) == NOT_PARSED


# --- survey ------------------------------------------------------------------------------

NESTED_TEXT = mime(multipart(text()), text())
QUOTING_THE_BOUNDARY = mime(text(b"--SEP:)\r\n"), text(), text())


@pytest.mark.parametrize("message, bound, cut_at, limit", [
    # An abusive field: the parser may read nothing of the message.
    (b"Subject: x\r\n" + FIELD + b"\r\nhello\r\n", limits(), 0, "abusive_field"),
    # No nesting allowed (depth 0): the message's own multipart Content-Type, its first
    # line, is already too deep.
    (NESTED_TEXT.removeprefix(b"Subject: test\r\nMIME-Version: 1.0\r\n"), limits(depth=0), 0, "max_depth"),
    # A closing delimiter counts: of one part's two delimiter lines, the third line is
    # the nested multipart's closing "--inner--".
    (NESTED_TEXT, limits(parts=1), NESTED_TEXT.index(b"--inner--"), "max_parts"),
    # A text line that only starts with the boundary neither counts nor closes it.
    (QUOTING_THE_BOUNDARY, limits(parts=1), QUOTING_THE_BOUNDARY.rindex(b"--SEP\r\n"), "max_parts"),
])
def test_the_survey_cuts_the_message_where_a_bound_is_reached(message, bound, cut_at, limit):
    assert _mime.survey(message, bound) == (cut_at, limit)


def test_by_default_twenty_multiparts_may_nest():
    default = _mime.Limits(100, 100, 100, 10)
    twenty, deeper = nested(20, text()), nested(21, text())
    assert _mime.survey(twenty, default) == (len(twenty), None)
    cut = deeper.index(b'Content-Type: multipart/mixed; boundary="b20"')  # the 21st
    assert _mime.survey(deeper, default) == (cut, "max_depth")


# --- parts and nesting -------------------------------------------------------------------


def test_a_closed_multiparts_boundary_in_a_later_text_is_no_delimiter():
    # A reply quoting "--inner" lines after the multipart "inner" has ended: they make
    # no parts, so the attachment after them is within max_parts (5: the message, the
    # alternative, its text, the reply, the attachment).
    message = mime(multipart(text()), text(b"--inner\r\n" * 10), attachment("setup.exe"))
    assert refusal(load(max_parts=5), message) == REJECTED


def test_a_multipart_that_reuses_an_outer_boundary_is_judged_without_raising():
    # Malformed (a boundary must not occur inside its own multipart), but anyone can send it.
    message = mime(multipart(multipart(boundary=b"SEP", closed=False), boundary=b"B", closed=False))
    assert message.endswith(b'boundary="SEP"\r\n\r\n--SEP--\r\n')  # the inner ones unclosed
    scan(load(), message)


def test_an_unclosed_multipart_ends_at_its_parents_next_delimiter():
    # Its parent's delimiter ends it: the multiparts after it are no deeper.
    message = mime(*[multipart(text(), closed=False)] * 5, attachment("setup.exe"))
    assert refusal(load(max_depth=2), message) == REJECTED


@pytest.mark.parametrize("part", [
    attachment("notes.txt", content_type='text/plain; name="multipart-notes.txt"'),
    attachment("notes.txt", content_type="application/x-multipart-archive"),
    attachment(None, disposition='multipart/mixed; boundary="x"'),  # a disposition is no type
])
def test_only_a_multipart_content_type_is_nesting(part):
    assert refusal(load(max_depth=1), mime(text(), part, attachment("setup.exe"))) == REJECTED


def test_a_message_that_starts_with_its_content_type_is_bounded_in_depth_too():
    # No header before it: the survey must still see the message's own multipart.
    def deep(depth):
        return nested(depth, attachment("setup.exe")).removeprefix(b"Subject: deep\r\nMIME-Version: 1.0\r\n")
    assert deep(11).startswith(b"Content-Type: multipart/mixed")
    assert refusal(load(max_depth=11), deep(11)) == REJECTED
    assert scan(load(max_depth=10), deep(11)) == LIMITED


def nested_across(break_at: int, depth: int) -> bytes:
    """`depth` multiparts inside one another, an .exe innermost; a text part in the
    outermost fills the message so that the second one's Content-Type line begins
    right after the line break at byte `break_at`."""
    head = (b'Subject: deep\r\nContent-Type: multipart/mixed; boundary="b0"\r\n\r\n'
            b"--b0\r\nContent-Type: text/plain\r\n\r\n")
    delimiter = b"\r\n--b0\r\n"  # its line feed is the break
    filler = b"x" * (break_at - len(head) - len(delimiter) + 1)
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (level, level)
                       for level in range(1, depth))
    closing = b"".join(b"--b%d--\r\n" % level for level in reversed(range(1, depth)))
    message = head + filler + delimiter + opening + attachment("setup.exe") + closing + b"--b0--\r\n"
    assert message[break_at:break_at + 15] == b"\nContent-Type: "
    return message


@pytest.mark.parametrize("break_at", [1000, 65534, 65535, 65536, 65537])
@pytest.mark.parametrize("depth, expected", [(2, (REJECTED, {})), (3, LIMITED)])
def test_a_multipart_is_counted_once_wherever_its_line_starts(break_at, depth, expected):
    # The survey searches the message 64 KiB at a time: a line at the seam between two
    # searches is neither missed (nesting hidden) nor counted twice (a limit reached
    # too soon).
    assert scan(load(max_depth=2), nested_across(break_at, depth)) == expected
