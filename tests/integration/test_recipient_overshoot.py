"""Recipients past `max_recipients` get 452 and are no client error, as RFC 5321 asks
(the client sends them again in another transaction), until a client goes past the
overshoot limit of 1000 (Postfix's smtpd_recipient_overshoot_limit): from there each one
counts against the error budget."""

import smtplib

import pytest

from mailproxy.proxy.smtp_session import RECIPIENT_OVERSHOOT_LIMIT
from tests.support.clients import connect

pytestmark = pytest.mark.integration

MX = {"name": "mx", "mode": "mx", "upstream": "sink", "local_domains": ["example.test"],
      "max_recipients": 1, "max_errors": 3, "soft_error_limit": 3}


def test_recipients_past_the_overshoot_limit_count_as_errors(sink, make_proxy):
    proxy = make_proxy(sink.address, listeners=[MX])
    client = connect(proxy)
    client.ehlo("client.test")
    assert client.mail("a@sender.example")[0] == 250
    assert client.rcpt("user@example.test")[0] == 250
    overshoot = RECIPIENT_OVERSHOOT_LIMIT + 3  # the last three are the errors that end it
    client.sock.sendall(b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(overshoot)))
    replies = []
    while True:
        code, text = client.getreply()
        replies.append(code)
        if code != 452:
            break
    assert replies == [452] * overshoot + [421]
    assert text == b"4.7.0 proxy.test Error: too many errors, closing connection"
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
