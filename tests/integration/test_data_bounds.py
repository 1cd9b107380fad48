"""The listener's max_message_size bounds the message as it is forwarded (bare line ends
made CRLF, the client's dot-stuffing redone), not as the client sent it."""

import pytest

from tests.support.clients import connect, send_raw

pytestmark = pytest.mark.integration

LIMIT = 20000
TOO_BIG = (552, b"5.3.4 Message size exceeds fixed maximum message size")


@pytest.fixture(params=["stream", "whole"])
def bounded_proxy(sink, make_proxy, request):
    """An mx listener with a small limit, streaming messages or taking them whole."""
    return make_proxy(
        sink.address,
        listeners=[{"name": "mx", "mode": "mx", "upstream": "sink", "local_domains": ["example.test"],
                    "max_message_size": LIMIT, "data_mode": request.param}],
    )


def lines_forwarded_as(size: int, line: bytes, subject: bytes) -> list[bytes]:
    """Message lines (without line ends) that take exactly `size` bytes once each goes
    out with CRLF: a header, an empty line, then `line` repeated, the last one longer."""
    lines = [b"Subject: " + subject, b""]
    count, rest = divmod(size - sum(len(x) + 2 for x in lines), len(line) + 2)
    return lines + [line] * (count - 1) + [line + b"x" * rest]


@pytest.mark.parametrize("ending", [b"\n", b"\r"], ids=["bare LF", "bare CR"])
def test_a_message_over_the_limit_only_once_normalised_is_refused(bounded_proxy, sink, ending):
    # Each bare line end becomes CRLF: sent as about 15,000 bytes, forwarded as LIMIT + 1.
    lines = lines_forwarded_as(LIMIT + 1, b"ab", b"grows")
    sent = ending.join(lines) + b"\r\n"
    assert len(sent) < LIMIT * 0.8
    with connect(bounded_proxy) as client:
        client.ehlo("client.test")
        assert send_raw(client, "a@sender.example", "user@example.test", sent + b".\r\n") == TOO_BIG
        # The session is in step: the next message goes through, and it alone arrives.
        assert send_raw(client, "a@sender.example", "user@example.test",
                        b"Subject: small\r\n\r\nfits\r\n.\r\n")[0] == 250
    assert sink.bodies(expected=1) == [b"Subject: small\n\nfits\n"]
    assert len(sink.messages()) == 1


def test_a_message_at_the_limit_once_normalised_is_delivered_whole(bounded_proxy, sink):
    # Lines ending in bare LF, then lines the client dot-stuffed although they start
    # with no dot (a receiver drops the first dot of every line, RFC 5321 4.5.2): sent
    # as about 22,500 bytes, forwarded as exactly LIMIT.
    bare = lines_forwarded_as(LIMIT // 4, b"ab", b"at the limit")
    stuffed = [b"cd"] * (LIMIT * 3 // 4 // 4)
    content = bare + stuffed
    sent = b"\n".join(bare) + b"\r\n" + b"".join(b"." + line + b"\r\n" for line in stuffed)
    assert sum(len(line) + 2 for line in content) == LIMIT
    assert len(sent) > LIMIT * 1.1
    with connect(bounded_proxy) as client:
        client.ehlo("client.test")
        assert send_raw(client, "a@sender.example", "user@example.test", sent + b".\r\n")[0] == 250
    # smtp-sink's dump has LF line ends and no dot-stuffing.
    assert sink.bodies(expected=1) == [b"".join(line + b"\n" for line in content)]
