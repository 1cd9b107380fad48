"""SMTP smuggling (CVE-2023-51764/51765/51766): the bytes that reach a lax upstream."""

import pytest

from tests.support.clients import connect, send_raw
from tests.support.recorder import RecordingUpstream

pytestmark = pytest.mark.integration

PAYLOADS = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CR": b"\r.\r",
    "CR.CRLF": b"\r.\r\n",
}


@pytest.mark.parametrize("data_mode", ["stream", "whole"])
@pytest.mark.parametrize("separator", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_a_lax_upstream_sees_one_message_with_crlf_only(make_proxy, separator, data_mode):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, listener={"data_mode": data_mode})
        data = (
            b"Subject: outer\r\n\r\nhello" + separator
            + b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n"
            + b"Subject: smuggled\r\n\r\nevil\r\n.\r\n"
        )
        with connect(proxy) as client:
            client.ehlo("client.test")
            assert send_raw(client, "a@sender.example", "user@example.test", data)[0] == 250
        # Once the proxy's QUIT ended the upstream session, nothing more can arrive.
        [session] = upstream.wait_ended(1)
        assert len(upstream.messages) == 1
        assert upstream.smuggled == []
        assert session.commands[-2:] == [b"DATA", b"QUIT"]  # no command after the message
        [message] = upstream.messages
        assert b"Subject: smuggled" in message  # still inside the one message
        # No bare CR or LF reached the upstream anywhere in the session.
        raw = bytes(upstream.received)
        assert raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r")
