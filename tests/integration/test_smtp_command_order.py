"""Commands out of order get the proxy's own 503 with its exact text, and leave the
transaction as it was: the upstream never sees them."""

import pytest

from tests.support.clients import connect

pytestmark = pytest.mark.integration


def test_commands_out_of_order_are_refused_and_the_transaction_stands(proxy, sink):
    with connect(proxy) as client:
        assert client.docmd("MAIL", "FROM:<a@sender.example>") == (503, b"5.5.1 Error: send HELO/EHLO first")
        client.ehlo("client.test")
        assert client.docmd("RCPT", "TO:<user@example.test>") == (503, b"5.5.1 Error: need MAIL command")
        assert client.mail("a@sender.example")[0] == 250
        assert client.docmd("MAIL", "FROM:<b@sender.example>") == (503, b"5.5.1 Error: nested MAIL command")
        assert client.rcpt("user@example.test")[0] == 250
        assert client.docmd("DATA", "now") == (501, b"5.5.4 Syntax: DATA")
        assert client.data(b"Subject: one\r\n\r\nbody\r\n")[0] == 250
    fields, _ = sink.transactions(expected=1)[0]
    assert fields["X-Mail-Args"] == ["<a@sender.example>"]
