"""mailproxy.protocol.smtp and smtp_message: wire-byte tables and properties, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailproxy.protocol.smtp import (
    ProtocolError,
    ReplyParser,
    ServerReply,
    client_ehlo_reply,
    ehlo_keywords,
    make_reply,
    parse_path,
    parse_size,
    split_command,
    xtext,
)
from mailproxy.protocol.smtp_message import (
    END_OF_DATA,
    DataReceiver,
    has_bare_line_ends,
    unstuff,
    wire_body,
)
from tests.support.chunks import splits


def replies_of(parser: ReplyParser) -> list[ServerReply]:
    out = []
    while (reply := parser.next_reply()) is not None:
        out.append(reply)
    return out


def parse_all(data: bytes, **limits) -> list[ServerReply]:
    parser = ReplyParser(**limits)
    parser.feed(data)
    return replies_of(parser)


# --- ReplyParser -------------------------------------------------------------------------


def test_single_line_reply():
    [reply] = parse_all(b"250 2.1.0 Ok\r\n")
    assert reply == ServerReply(250, (b"2.1.0 Ok",), b"250 2.1.0 Ok\r\n")
    assert reply.enhanced == "2.1.0"
    assert reply.text == "2.1.0 Ok"
    assert reply.positive is True
    assert str(reply) == "250 2.1.0 Ok"


def test_multi_line_reply():
    wire = b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n"
    [reply] = parse_all(wire)
    assert reply.code == 250
    assert reply.lines == (b"mx.example.test", b"PIPELINING", b"SIZE 10240000", b"8BITMIME")
    assert reply.raw == wire
    assert reply.text == "mx.example.test\nPIPELINING\nSIZE 10240000\n8BITMIME"
    assert ehlo_keywords(reply) == {"PIPELINING": "", "SIZE": "10240000", "8BITMIME": ""}


def test_reply_fed_byte_by_byte():
    wire = b"550-5.7.1 first\r\n550 5.7.1 second\r\n"
    parser = ReplyParser()
    got = []
    for i in range(len(wire)):
        parser.feed(wire[i : i + 1])
        reply = parser.next_reply()
        if reply is not None:
            got.append((i, reply))
    assert [i for i, _ in got] == [len(wire) - 1]  # complete only with its last byte
    reply = got[0][1]
    assert (reply.code, reply.lines, reply.raw) == (550, (b"5.7.1 first", b"5.7.1 second"), wire)
    assert reply.enhanced == "5.7.1"
    assert reply.positive is False


def test_pipelined_replies_come_out_in_order():
    replies = parse_all(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
    assert [(r.code, r.enhanced) for r in replies] == [(250, "2.1.0"), (250, "2.1.5"), (354, None)]


def test_incomplete_reply_waits():
    parser = ReplyParser()
    parser.feed(b"250-first\r\n250 sec")
    assert parser.next_reply() is None
    parser.feed(b"ond\r\n")
    assert parser.next_reply().lines == (b"first", b"second")
    assert parser.next_reply() is None


@pytest.mark.parametrize(
    "wire, enhanced",
    [
        (b"550 5.1.1 <x@y>: Recipient unknown\r\n", "5.1.1"),
        (b"451 4.3.0 Try later\r\n", "4.3.0"),
        (b"250 2.0.0\r\n", "2.0.0"),
        (b"250 OK\r\n", None),
        (b"250 2.1.0ok\r\n", None),
        (b"250 3.1.0 odd\r\n", None),
        (b"250\r\n", None),
    ],
)
def test_enhanced_code(wire, enhanced):
    [reply] = parse_all(wire)
    assert reply.enhanced == enhanced


def test_bare_code_and_bare_lf():
    [reply] = parse_all(b"250\r\n")
    assert (reply.code, reply.lines, reply.text) == (250, (b"",), "")
    [reply] = parse_all(b"220 hi\n")
    assert reply.raw == b"220 hi\r\n"  # relayed with a proper line end


def test_too_long_line_without_end():
    parser = ReplyParser(max_line=16)
    parser.feed(b"250 " + b"x" * 13)  # 17 bytes, no line end yet
    with pytest.raises(ProtocolError, match="^reply line too long$"):
        parser.next_reply()


def test_too_long_complete_line():
    with pytest.raises(ProtocolError, match="^reply line too long$"):
        parse_all(b"250 " + b"x" * 20 + b"\r\n", max_line=16)


def test_line_at_the_limit_is_fine():
    line = b"250 " + b"x" * 10 + b"\r\n"  # 16 bytes with CRLF
    assert parse_all(line, max_line=16)[0].raw == line


def test_too_many_lines():
    with pytest.raises(ProtocolError, match="^reply has too many lines$"):
        parse_all(b"250-a\r\n250-b\r\n250-c\r\n250 d\r\n", max_lines=3)


def test_code_changed_mid_reply():
    with pytest.raises(ProtocolError, match="^reply code changed from 250 to 251 mid-reply$"):
        parse_all(b"250-first\r\n251 second\r\n")


@pytest.mark.parametrize(
    "wire, message",
    [
        (b"hello\r\n", "malformed reply line b'hello'"),
        (b"25\r\n", "malformed reply line b'25'"),
        (b"2500 x\r\n", "malformed reply line b'2500 x'"),
        (b"250_x\r\n", "malformed reply line b'250_x'"),
        (b"\r\n", "malformed reply line b''"),
        (b"\xff\xfe\xfd\r\n", "malformed reply line b'\\xff\\xfe\\xfd'"),
        (b"099 x\r\n", "reply code 99 out of range"),
        (b"600 x\r\n", "reply code 600 out of range"),
        (b"199 x\r\n", "reply code 199 out of range"),
    ],
)
def test_garbage(wire, message):
    with pytest.raises(ProtocolError) as info:
        parse_all(wire)
    assert str(info.value) == message


def test_make_reply_matches_the_parsed_form():
    reply = make_reply(250, "mx.example.test", "PIPELINING", "SIZE 100")
    assert reply.raw == b"250-mx.example.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
    assert parse_all(reply.raw) == [reply]
    assert make_reply(221).raw == b"221 \r\n"


REPLY_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
WELL_FORMED = st.builds(
    lambda code, texts: make_reply(code, *texts), st.integers(200, 599), st.lists(REPLY_TEXT, min_size=1, max_size=8)
)


@given(st.lists(WELL_FORMED, max_size=4), st.binary(max_size=600), st.lists(st.integers(0, 1200), max_size=6))
@example([], b"250-a\r\n550 b\r\n", [])
@example([make_reply(250, "ok")] * 3, b"garbage\r\n", [3])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_reply_parser_never_raises_anything_else(replies, junk, cuts):
    """Well-formed replies, then arbitrary bytes, fed in arbitrary pieces: the replies
    come out exactly as sent, and what follows is either more well-shaped replies or a
    ProtocolError, never another exception."""
    data = b"".join(reply.raw for reply in replies) + junk
    parser = ReplyParser(max_line=64, max_lines=8)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    parsed = []
    try:
        for start, end in zip(bounds, bounds[1:]):
            parser.feed(data[start:end])
            while (reply := parser.next_reply()) is not None:
                parsed.append(reply)
    except ProtocolError:
        pass
    assert parsed[: len(replies)] == replies
    for reply in parsed[len(replies):]:
        assert 200 <= reply.code <= 599
        assert reply.raw.endswith(b"\r\n")
        assert len(reply.lines) == reply.raw.count(b"\r\n")


# --- DataReceiver ------------------------------------------------------------------------

# (what the client sends after 354, the message as received, what follows the end)
DATA_TABLE = [
    (b".\r\n", b"", b""),
    (b".\r\nQUIT\r\n", b"", b"QUIT\r\n"),
    (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", b"QUIT\r\n"),
    (b"\r\n.\r\n", b"\r\n", b""),
    (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n", b""),
    (b"a\r.\rb\r\n.\r\nRSET\r\n", b"a\r.\rb\r\n", b"RSET\r\n"),
    (b"a\r\n.\nb\r\n.\r\n", b"a\r\n.\nb\r\n", b""),
    (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n", b""),
    (b"..\r\n.\r\n", b"..\r\n", b""),
    (b"a\r\n..\r\n...\r\n.\r\n", b"a\r\n..\r\n...\r\n", b""),
    (b"line\r\n.\r\n.\r\n", b"line\r\n", b".\r\n"),
    (b"x\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", b"x\r\n", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"),
    (b"Subject: t\r\n\r\nbody\r\n.\r\n", b"Subject: t\r\n\r\nbody\r\n", b""),
    (b"x" * 40 + b"\r\n.\r\n", b"x" * 40 + b"\r\n", b""),
    (b"a\r\n.x\r\n.\r\n", b"a\r\n.x\r\n", b""),
    (b"\r\n\r\n.\r\n", b"\r\n\r\n", b""),
]


def receive(chunks, limit: int = 1 << 20) -> tuple[bytes, bytes, int, bool]:
    """Feed chunks until the end marker; bytes never fed count as leftover (they would
    stay in the session's input buffer)."""
    receiver = DataReceiver(limit)
    assert not receiver.done
    for index, chunk in enumerate(chunks):
        if receiver.feed(chunk):
            assert receiver.done
            rest = b"".join(chunks[index + 1 :])
            with pytest.raises(RuntimeError, match="^message already complete$"):
                receiver.feed(b"more")
            return receiver.body, receiver.leftover + rest, receiver.size, receiver.overflow
    raise AssertionError(f"end of data not found in {chunks!r}")


@pytest.mark.parametrize("stream, body, leftover", DATA_TABLE)
def test_data_receiver_every_split(stream, body, leftover):
    for chunks in splits(stream):
        got = receive(chunks)
        assert got == (body, leftover, len(body), False), chunks


@pytest.mark.parametrize(
    "stream", [b"", b"a\r\n", b"a\r\n.", b"a\r\n.\r", b"a\n.\n", b"a\r.\r", b"a\r\n.\n", b"..\r\n"]
)
def test_data_receiver_no_end_yet(stream):
    receiver = DataReceiver(1000)
    for i in range(len(stream)):
        assert receiver.feed(stream[i : i + 1]) is False
    assert receiver.feed(b"") is False
    assert not receiver.done
    with pytest.raises(RuntimeError, match="^message not complete$"):
        receiver.body


def test_data_receiver_overflow_still_finds_the_end():
    stream = b"x" * 50 + b"\r\n.\r\nQUIT\r\n"
    for chunks in splits(stream):
        assert receive(chunks, limit=10) == (b"", b"QUIT\r\n", 52, True), chunks


@pytest.mark.parametrize(
    "limit, overflow",
    [(6, False), (7, False), (5, True), (4, True)],
)
def test_data_receiver_limit_boundary_does_not_depend_on_chunking(limit, overflow):
    # The message is 6 bytes ("abcd" CRLF); the end marker's ".\r" may arrive in the same
    # read as the message, and must not count towards its size.
    stream = b"abcd\r\n.\r\nQUIT\r\n"
    expected = (b"" if overflow else b"abcd\r\n", b"QUIT\r\n", 6, overflow)
    for chunks in splits(stream):
        assert receive(chunks, limit=limit) == expected, chunks


@given(
    st.binary(max_size=300),
    st.binary(max_size=40),
    st.lists(st.integers(0, 400), max_size=8),
    st.integers(0, 400),
)
@example(b"a\n.\nb", b"QUIT\r\n", [], 1000)
@example(b"abcd", b"", [7, 8], 6)
@example(b".\r\n", b"", [2], 1000)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_data_receiver_property(content, after, cuts, limit):
    stream = content + END_OF_DATA + after
    bounds = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    body, leftover, size, overflow = receive(chunks, limit=limit)
    # The oracle: the first <CR><LF>.<CR><LF>, counting the CRLF that ended the DATA line.
    at = (b"\r\n" + stream).find(END_OF_DATA)
    expected_body = stream[:at]
    assert size == len(expected_body)
    assert overflow is (len(expected_body) > limit)
    assert body == (b"" if overflow else expected_body)
    assert leftover == stream[at + 3 :]
    assert END_OF_DATA not in body
    assert not body.startswith(b".\r\n")


# --- wire_body, unstuff ------------------------------------------------------------------


def test_clean_message_is_returned_unchanged():
    body = b"Subject: hi\r\n\r\nline\r\n..dotted\r\n"
    assert wire_body(body) is body
    empty = b""
    assert wire_body(empty) is empty


@pytest.mark.parametrize(
    "body, wire",
    [
        (b"a\nb\r\n", b"a\r\nb\r\n"),
        (b"a\rb\r\n", b"a\r\nb\r\n"),
        (b"a\r\rb\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\n\nb\n", b"a\r\n\r\nb\r\n"),
        (b"a\r\r\n", b"a\r\n\r\n"),
        (b"a\n..b\r\n", b"a\r\n..b\r\n"),  # the client's stuffing is kept
        (b"a\n.b\r\n", b"a\r\nb\r\n"),  # a single leading dot is the client's stuffing
    ],
)
def test_bare_line_ends_become_crlf(body, wire):
    assert has_bare_line_ends(body)
    assert wire_body(body) == wire


SMUGGLING = [
    b"x\n.\nMAIL FROM:<a@b>\r\n",
    b"x\r.\rMAIL FROM:<a@b>\r\n",
    b"x\n.\r\nMAIL FROM:<a@b>\r\n",
    b"x\r\n.\nMAIL FROM:<a@b>\r\n",
    b"x\r\n.\rMAIL FROM:<a@b>\r\n",
    b"x\r.\r\nMAIL FROM:<a@b>\r\n",
    b"x\n.\rMAIL FROM:<a@b>\r\n",
    b"x\r\n..\nMAIL FROM:<a@b>\r\n",
]


def assert_safe_wire(wire: bytes) -> None:
    assert END_OF_DATA not in b"\r\n" + wire  # also not at the very start
    assert not has_bare_line_ends(wire)
    assert wire == b"" or wire.endswith(b"\r\n")


def assert_restuffed(wire: bytes) -> None:
    for line in wire.split(b"\r\n"):
        if line.startswith(b"."):
            assert line.startswith(b".."), line


@pytest.mark.parametrize("payload", SMUGGLING)
def test_smuggling_payloads_are_neutralised(payload):
    wire = wire_body(payload)
    assert_safe_wire(wire)
    assert_restuffed(wire)
    assert wire.endswith(b"MAIL FROM:<a@b>\r\n")
    assert wire.startswith(b"x\r\n")


def test_smuggling_exact_output():
    assert wire_body(b"x\n.\nMAIL FROM:<a@b>\r\n") == b"x\r\n\r\nMAIL FROM:<a@b>\r\n"
    assert wire_body(b"x\r\n..\nMAIL FROM:<a@b>\r\n") == b"x\r\n..\r\nMAIL FROM:<a@b>\r\n"


@pytest.mark.parametrize("payload", SMUGGLING)
def test_smuggling_through_the_receiver(payload):
    """What the upstream would get: DATA, then the forwarded bytes, then .CRLF."""
    body, leftover, _, _ = receive([payload + b"\r\n.\r\nQUIT\r\n"])
    assert leftover == b"QUIT\r\n"
    upstream_stream = b"\r\n" + wire_body(body) + b".\r\n"
    # Exactly one end of data, at the very end.
    assert upstream_stream.find(END_OF_DATA) == len(upstream_stream) - len(END_OF_DATA)


@given(st.binary(max_size=300))
@example(b"a\r\n.\r\nb")
@example(b".")
@example(b"\r.\n")
@settings(max_examples=500, deadline=None)
def test_wire_body_property(content):
    assert_safe_wire(wire_body(content + b"\r\n"))


@settings(deadline=None)
@given(st.lists(st.binary(max_size=20).filter(lambda l: b"\r" not in l and b"\n" not in l), max_size=10))
def test_stuffing_round_trip(lines):
    """Content with CRLF lines, stuffed as a client does, comes back from unstuff."""
    content = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    assert wire_body(stuffed) is stuffed
    assert unstuff(wire_body(stuffed)) == content


@pytest.mark.parametrize(
    "wire, content",
    [
        (b"..a\r\n", b".a\r\n"),
        (b"a\r\n..b\r\n", b"a\r\n.b\r\n"),
        (b"a\r\n...\r\n", b"a\r\n..\r\n"),
        (b"a\r\n..\r\n", b"a\r\n.\r\n"),
        (b"..\r\n..\r\n", b".\r\n.\r\n"),
        # RFC 5321 4.5.2: a leading dot is removed even when no second dot follows, as
        # the upstream will do; plugins must see the message it stores.
        (b".Subject: x\r\n", b"Subject: x\r\n"),
        (b"a\r\n.b\r\n", b"a\r\nb\r\n"),
    ],
)
def test_unstuff(wire, content):
    assert unstuff(wire) == content


def test_unstuff_without_dots_returns_the_same_object():
    wire = b"Subject: x\r\n\r\nno dots here. none.\r\n"
    assert unstuff(wire) is wire


# --- commands ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, parsed",
    [
        (b"mail FROM:<a@b>", ("MAIL", "FROM:<a@b>")),
        (b"QUIT", ("QUIT", "")),
        (b"EHLO  client.example ", ("EHLO", "client.example")),
        (b"xfoo bar baz", ("XFOO", "bar baz")),
    ],
)
def test_split_command(line, parsed):
    assert split_command(line) == parsed


@pytest.mark.parametrize(
    "argument, keyword, address, params",
    [
        ("FROM:<>", "FROM", "", {}),
        ("FROM:<> BODY=8BITMIME", "FROM", "", {"BODY": "8BITMIME"}),
        ("FROM:<a@example.test>", "FROM", "a@example.test", {}),
        ("from:<a@example.test>", "FROM", "a@example.test", {}),
        ("FROM: <a@example.test>", "FROM", "a@example.test", {}),
        ("FROM:<a@b> SIZE=100", "FROM", "a@b", {"SIZE": "100"}),
        ("FROM:<a@b> size=100 body=8bitmime", "FROM", "a@b", {"SIZE": "100", "BODY": "8bitmime"}),
        ("FROM:<a@b> SMTPUTF8", "FROM", "a@b", {"SMTPUTF8": True}),
        ("FROM:<a@b>  SIZE=1   SMTPUTF8 ", "FROM", "a@b", {"SIZE": "1", "SMTPUTF8": True}),
        ("FROM:<a@b> AUTH=<>", "FROM", "a@b", {"AUTH": "<>"}),
        ("FROM:<a@b> ENVID=x=y", "FROM", "a@b", {"ENVID": "x=y"}),
        ("TO:<c@d> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d", "TO", "c@d", {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;c@d"}),
        ("TO:<postmaster>", "TO", "postmaster", {}),
        ("TO:<@relay.example:c@d>", "TO", "@relay.example:c@d", {}),
        ('FROM:<"a>b"@example.test> SIZE=5', "FROM", '"a>b"@example.test', {"SIZE": "5"}),
        ('FROM:<"john doe"@example.test>', "FROM", '"john doe"@example.test', {}),
        ('FROM:<"a\\">"@example.test>', "FROM", '"a\\">"@example.test', {}),
        ("FROM:a@b", "FROM", "a@b", {}),
        ("FROM:a@b SIZE=1", "FROM", "a@b", {"SIZE": "1"}),
    ],
)
def test_parse_path(argument, keyword, address, params):
    assert parse_path(argument, keyword) == (address, params)


@pytest.mark.parametrize(
    "argument, keyword, message",
    [
        ("TO:<a@b>", "FROM", "Syntax: FROM:<address>"),
        ("FROM <a@b>", "FROM", "Syntax: FROM:<address>"),
        ("", "TO", "Syntax: TO:<address>"),
        ("FROM:<a@b", "FROM", "Missing '>' after the address"),
        ('FROM:<"a>b@c>', "FROM", "Missing '>' after the address"),
        ("FROM:<a@b>X", "FROM", "Bad address syntax"),
        ("FROM:<a b@c>", "FROM", "Bad address syntax"),
        ("FROM:<a<b@c>", "FROM", "Bad address syntax"),
        ("FROM:<a@b>>", "FROM", "Bad address syntax"),
        ("FROM:<" + "a" * 316 + "@b.cd>", "FROM", "Bad address syntax"),
        ("FROM:<a@b> =x", "FROM", "Bad parameter '=x'"),
        ("FROM:<a@b> SI!ZE=1", "FROM", "Bad parameter 'SI!ZE=1'"),
        ('FROM:<"a\r\nRSET"@b>', "FROM", "Bad address syntax"),
    ],
)
def test_parse_path_errors(argument, keyword, message):
    with pytest.raises(ValueError) as info:
        parse_path(argument, keyword)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "value, encoded",
    [
        ("client.example.test", "client.example.test"),
        ("[192.0.2.1]", "[192.0.2.1]"),
        ("a+b=c", "a+2Bb+3Dc"),
        ("a b", "a+20b"),
        ("\r\n", "+0D+0A"),
        ("é", "+C3+A9"),
        ("~!", "~!"),
        ("\x7f", "+7F"),
        ("", ""),
    ],
)
def test_xtext(value, encoded):
    assert xtext(value) == encoded


# --- EHLO towards the client -------------------------------------------------------------

UPSTREAM_EHLO = make_reply(
    250,
    "upstream.example.test",
    "PIPELINING",
    "SIZE 5000",
    "VRFY",
    "ETRN",
    "STARTTLS",
    "AUTH PLAIN LOGIN",
    "AUTH=PLAIN LOGIN",
    "ENHANCEDSTATUSCODES",
    "8BITMIME",
    "DSN",
    "SMTPUTF8",
    "CHUNKING",
    "BINARYMIME",
    "XCLIENT NAME ADDR PORT PROTO HELO LOGIN",
    "XFORWARD NAME ADDR",
)


def test_client_ehlo_reply_filters_and_takes_the_smaller_size():
    reply = client_ehlo_reply(UPSTREAM_EHLO, 10000, starttls=False, auth=())
    assert reply.raw == (
        b"250-upstream.example.test\r\n"
        b"250-PIPELINING\r\n"
        b"250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n"
        b"250-DSN\r\n"
        b"250 SIZE 5000\r\n"
    )
    assert client_ehlo_reply(UPSTREAM_EHLO, 3000, False, ()).lines[-1] == b"SIZE 3000"


def test_client_ehlo_reply_adds_starttls_and_auth_when_asked():
    reply = client_ehlo_reply(UPSTREAM_EHLO, 10000, starttls=True, auth=("PLAIN", "LOGIN"))
    keywords = ehlo_keywords(reply)
    assert list(keywords) == [
        "PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN", "SIZE", "STARTTLS", "AUTH",
    ]
    assert keywords["AUTH"] == "PLAIN LOGIN"
    assert reply.raw.endswith(b"250-SIZE 5000\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n")


@pytest.mark.parametrize("size_line", [None, "SIZE", "SIZE 0", "SIZE lots", "SIZE \u00b2"])
def test_client_ehlo_reply_size_without_upstream_limit(size_line):
    lines = ["upstream.example.test", "PIPELINING"] + ([size_line] if size_line else [])
    reply = client_ehlo_reply(make_reply(250, *lines), 7777, starttls=False, auth=())
    assert reply.raw == b"250-upstream.example.test\r\n250-PIPELINING\r\n250 SIZE 7777\r\n"


def test_client_ehlo_reply_minimal_upstream():
    reply = client_ehlo_reply(make_reply(250, "up"), 1024, starttls=True, auth=())
    assert reply.raw == b"250-up\r\n250-SIZE 1024\r\n250 STARTTLS\r\n"


@pytest.mark.parametrize(
    "body, wire",
    [
        (b".\r\n", b"\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\r\n.\r\n", b"a\r\n\r\n"),
    ],
)
def test_lone_dot_line_in_a_clean_body_is_rewritten(body, wire):
    """DataReceiver never hands such a body over; wire_body is safe with it anyway."""
    assert not has_bare_line_ends(body)
    assert wire_body(body) == wire


@pytest.mark.parametrize("argument", ["FROM:", "FROM:   ", "TO:"])
def test_parse_path_refuses_a_missing_path(argument):
    with pytest.raises(ValueError):
        parse_path(argument, argument.split(":")[0])


@pytest.mark.parametrize("value, size", [
    ("1024", 1024), ("0", 0), ("\u00b2", None), ("12a", None), ("", None), (True, None), (None, None),
])
def test_parse_size(value, size):
    assert parse_size(value) == size
