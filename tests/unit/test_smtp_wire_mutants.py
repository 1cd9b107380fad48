"""mailproxy.protocol.smtp where a mutation pass found it unchecked: the fast paths
(a reply of one line, a path with nothing quoted, xtext with nothing to encode) give
exactly what the general code gives, and the bounds hold to the byte. No sockets."""

from __future__ import annotations

import dataclasses

import pytest

from mailproxy.protocol.smtp import ProtocolError, ReplyParser, ServerReply, make_reply, parse_path, xtext


def replies_of(parser: ReplyParser) -> list[ServerReply]:
    out = []
    while (reply := parser.next_reply()) is not None:
        out.append(reply)
    return out


def fed_alone(line: bytes) -> list[ServerReply]:
    """The line as the only bytes waiting: the parser's one-line fast path."""
    parser = ReplyParser()
    parser.feed(line)
    return replies_of(parser)


def fed_with_others(line: bytes) -> ServerReply:
    """The same line between two other replies in one read: the general path."""
    parser = ReplyParser()
    parser.feed(b"220 before\r\n" + line + b"221 after\r\n")
    before, reply, after = replies_of(parser)
    assert (before.raw, after.raw) == (b"220 before\r\n", b"221 after\r\n")
    return reply


def fed_byte_by_byte(line: bytes) -> list[ServerReply]:
    parser = ReplyParser()
    out = []
    for i in range(len(line)):
        parser.feed(line[i : i + 1])
        out += replies_of(parser)
    return out


# --- replies: values ------------------------------------------------------------------------


def test_a_reply_cannot_be_changed_in_place():
    """One reply object is shared by every session that sends it (the DATA go-ahead is
    made once); none of them may alter what the others relay."""
    reply = make_reply(354, "End data with <CR><LF>.<CR><LF>")
    with pytest.raises(dataclasses.FrozenInstanceError):
        reply.code = 250
    with pytest.raises(dataclasses.FrozenInstanceError):
        reply.raw = b"250 ok\r\n"
    assert reply.raw == b"354 End data with <CR><LF>.<CR><LF>\r\n"
    assert {reply: "go ahead"}[make_reply(354, "End data with <CR><LF>.<CR><LF>")] == "go ahead"


def test_a_multiline_reply_is_known_by_its_first_line():
    """The enhanced code and the short form in the log come from the first line, which
    servers keep for the status; later lines are detail (or EHLO keywords)."""
    reply = fed_with_others(b"550-5.7.1 Rejected\r\n550 see https://example.test/why\r\n")
    assert reply.enhanced == "5.7.1"
    assert str(reply) == "550 5.7.1 Rejected"
    [ehlo] = fed_byte_by_byte(b"250-mx.example.test\r\n250-PIPELINING\r\n250 4.2.0 SIZE\r\n")
    assert ehlo.enhanced is None
    assert str(ehlo) == "250 mx.example.test"


# --- replies: a reply of one line ----------------------------------------------------------

ONE_LINE = [
    b"250 2.1.0 Ok\r\n",
    b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"250\r\n",
    b"250 \r\n",
    b"421 4.4.2 bye\n",  # a bare LF: relayed with CRLF
    b"550 5.7.1 spaces  inside \r\n",
    b"250 a\rb\r\n",  # a CR inside the text is text
]


@pytest.mark.parametrize("line", ONE_LINE)
def test_a_one_line_reply_is_the_same_whichever_way_it_arrives(line):
    [alone] = fed_alone(line)
    body = line.rstrip(b"\r\n")
    assert alone == ServerReply(int(body[:3]), (body[4:],), body + b"\r\n")
    assert fed_with_others(line) == alone
    assert fed_byte_by_byte(line) == [alone]


def test_a_reply_line_alone_in_the_buffer_that_is_not_the_last_waits_for_the_rest():
    parser = ReplyParser()
    parser.feed(b"250-mx.example.test\r\n")
    assert parser.next_reply() is None
    assert parser.pending is True
    parser.feed(b"250-PIPELINING\r\n")
    assert parser.next_reply() is None
    parser.feed(b"250 SIZE 100\r\n")
    reply = parser.next_reply()
    assert reply == ServerReply(
        250,
        (b"mx.example.test", b"PIPELINING", b"SIZE 100"),
        b"250-mx.example.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n",
    )
    assert parser.pending is False
    # And the parser starts afresh: a reply of one line after it is not joined to it.
    parser.feed(b"221 bye\r\n")
    assert parser.next_reply() == ServerReply(221, (b"bye",), b"221 bye\r\n")


def test_the_last_line_of_a_reply_alone_in_the_buffer_keeps_the_earlier_lines():
    parser = ReplyParser()
    parser.feed(b"550-5.1.1 first\r\n")
    assert parser.next_reply() is None
    parser.feed(b"550 5.1.1 second\r\n")  # one line waiting, but the end of a longer reply
    assert parser.next_reply() == ServerReply(
        550, (b"5.1.1 first", b"5.1.1 second"), b"550-5.1.1 first\r\n550 5.1.1 second\r\n"
    )


def test_a_changed_code_on_the_last_line_alone_in_the_buffer_is_refused():
    parser = ReplyParser()
    parser.feed(b"250-first\r\n")
    assert parser.next_reply() is None
    parser.feed(b"550 second\r\n")
    with pytest.raises(ProtocolError, match="^reply code changed from 250 to 550 mid-reply$"):
        parser.next_reply()


def test_after_a_one_line_reply_nothing_is_pending():
    parser = ReplyParser()
    parser.feed(b"250 ok\r\n")
    assert parser.next_reply() is not None
    assert parser.pending is False
    assert parser.next_reply() is None


@pytest.mark.parametrize("max_line", [8, 9, 10])
def test_the_line_bound_is_the_same_for_a_line_alone_and_among_others(max_line):
    line = b"250 abcd\r\n"  # 10 bytes with its CRLF
    fits = len(line) <= max_line
    for feed in (lambda p: p.feed(line), lambda p: p.feed(line + b"250 x\r\n")):
        parser = ReplyParser(max_line=max_line)
        feed(parser)
        if fits:
            assert parser.next_reply().raw == line
        else:
            with pytest.raises(ProtocolError, match="^reply line too long$"):
                parser.next_reply()


@pytest.mark.parametrize(
    "line",
    [b"hello\r\n", b"25\r\n", b"25x ok\r\n", b"2x0 ok\r\n", b"250x\r\n", b"250_x\r\n", b"600 x\r\n", b"\r\n", b"\n"],
)
def test_a_malformed_line_alone_in_the_buffer_is_refused_as_among_others(line):
    with pytest.raises(ProtocolError) as alone:
        fed_alone(line)
    with pytest.raises(ProtocolError) as among:
        parser = ReplyParser()
        parser.feed(line + b"250 ok\r\n")
        replies_of(parser)
    assert str(alone.value) == str(among.value)


@pytest.mark.parametrize("wire", [b"\n250 ok\r\n", b"\r\n250 ok\r\n", b"250x\r\n250 ok\r\n"])
def test_a_malformed_first_line_is_refused_even_with_a_good_one_behind_it(wire):
    """Not waited on, not skipped: the upstream's stream is broken."""
    parser = ReplyParser()
    parser.feed(wire)
    with pytest.raises(ProtocolError, match="^malformed reply line "):
        parser.next_reply()


@pytest.mark.parametrize("code, ok", [(199, False), (200, True), (599, True), (600, False)])
def test_reply_codes_run_from_200_to_599(code, ok):
    line = b"%d text\r\n" % code
    for parse in (fed_alone, lambda line: [fed_with_others(line)]):
        if ok:
            assert [reply.code for reply in parse(line)] == [code]
        else:
            with pytest.raises(ProtocolError, match=f"^reply code {code} out of range$"):
                parse(line)


def test_a_malformed_line_is_quoted_in_the_error_to_40_bytes():
    """The error goes into the log: enough of the line to recognise it, no more."""
    line = b"HTTP/1.1 400 Bad Request, and a long explanation after it\r\n"
    with pytest.raises(ProtocolError) as info:
        fed_alone(line)
    assert str(info.value) == "malformed reply line b'HTTP/1.1 400 Bad Request, and a long exp'"


# --- paths: the closing bracket ------------------------------------------------------------


@pytest.mark.parametrize(
    "argument, address, params",
    [
        # Nothing quoted: the first '>' closes the path.
        ("FROM:<>", "", {}),
        ("FROM:<> SIZE=10", "", {"SIZE": "10"}),
        ("TO:<a@b> ORCPT=rfc822;a@b", "a@b", {"ORCPT": "rfc822;a@b"}),
        # A quote only after the path (in a parameter) changes nothing.
        ('FROM:<a@b> ENVID="x>y"', "a@b", {"ENVID": '"x>y"'}),
        ('FROM:<> ENVID="x"', "", {"ENVID": '"x"'}),
        # A '>' inside a quoted local part does not close the path; the one after does.
        ('FROM:<"a>"@b>', '"a>"@b', {}),
        ('FROM:<">"@b> SIZE=1', '">"@b', {"SIZE": "1"}),
        ('FROM:<"x>y>z"@example.test>', '"x>y>z"@example.test', {}),
        ('TO:<"a b>c"@d> NOTIFY=NEVER', '"a b>c"@d', {"NOTIFY": "NEVER"}),
        # An escaped quote does not end the quoted part, an escaped backslash does not
        # escape the quote after it.
        ('FROM:<"a\\"b>"@c>', '"a\\"b>"@c', {}),
        ('FROM:<"a\\\\"@c>', '"a\\\\"@c', {}),
        ('FROM:<"a\\\\">', '"a\\\\"', {}),
        ('FROM:<"\\>"@c>', '"\\>"@c', {}),
        # Two quoted parts, a '>' in each.
        ('FROM:<"a>"."b>"@c>', '"a>"."b>"@c', {}),
    ],
)
def test_the_path_ends_at_the_first_bracket_outside_quotes(argument, address, params):
    keyword = argument.split(":")[0]
    assert parse_path(argument, keyword) == (address, params)


@pytest.mark.parametrize(
    "argument",
    [
        "FROM:<",
        "FROM:<a@b",
        'FROM:<"a>b"@c',  # the only '>' is quoted
        'FROM:<"a\\">',  # the quote is escaped: still quoted at the end
        'FROM:<"a@b>',  # an unclosed quote holds the '>'
        'FROM:<"a\\',  # a backslash last, inside quotes, escapes nothing
        'FROM:<"a>\\',
    ],
)
def test_a_path_without_its_closing_bracket_is_refused(argument):
    with pytest.raises(ValueError, match="^Missing '>' after the address$"):
        parse_path(argument, "FROM")


@pytest.mark.parametrize("length, ok", [(319, True), (320, True), (321, False)])
def test_an_address_may_be_320_characters_and_not_321(length, ok):
    address = "a" * (length - len("@example.test")) + "@example.test"
    assert len(address) == length
    for argument in (f"FROM:<{address}>", f"FROM:{address}"):
        if ok:
            assert parse_path(argument, "FROM") == (address, {})
        else:
            with pytest.raises(ValueError, match="^Bad address syntax$"):
                parse_path(argument, "FROM")


# --- xtext ---------------------------------------------------------------------------------


def reference_xtext(value: str) -> str:
    """RFC 3461 section 4, character by character: "!" to "~" but "+" and "=" as they
    are, every other byte of the UTF-8 (surrogate-escaped bytes as themselves) as +HH."""
    out = []
    for char in value:
        if 0x21 <= ord(char) <= 0x7E and char not in "+=":
            out.append(char)
        else:
            out.extend(f"+{byte:02X}" for byte in char.encode("utf-8", "surrogateescape"))
    return "".join(out)


EVERY_ASCII = [chr(code) for code in range(0x80)]
BEYOND_ASCII = ["\x80", "\xa0", "é", "\u20ac", "\U0001f600", "\udcff", "\udc80"]


@pytest.mark.parametrize("char", EVERY_ASCII + BEYOND_ASCII, ids=lambda c: f"U+{ord(c):04X}")
def test_xtext_of_every_character_alone_and_among_others(char):
    expected = reference_xtext(char)
    assert xtext(char) == expected
    # Next to plain text (the fast path when the character needs nothing), and next to
    # a character that must be encoded (always the general path).
    assert xtext(f"a{char}z") == f"a{expected}z"
    assert xtext(f"+{char}=") == f"+2B{expected}+3D"


def test_xtext_of_all_of_them_at_once():
    every = "".join(EVERY_ASCII + BEYOND_ASCII)
    assert xtext(every) == reference_xtext(every)
    printable = "".join(c for c in EVERY_ASCII if "!" <= c <= "~")
    assert xtext(printable) == printable.replace("+", "+2B").replace("=", "+3D")


def test_xtext_spot_values():
    # Pinned by hand, so the reference above is checked too.
    assert xtext("!~") == "!~"
    assert xtext(" ") == "+20"
    assert xtext("\x00") == "+00"
    assert xtext("a=b+c") == "a+3Db+2Bc"
    assert xtext("<>") == "<>"
    assert xtext("é€") == "+C3+A9+E2+82+AC"
    assert xtext("\udcff") == "+FF"
