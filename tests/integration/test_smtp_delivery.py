"""Mail through the proxy to a real smtp-sink: what arrives, and what the client hears."""

import pytest

from tests.support.servers import run_swaks

from tests.support.clients import connect, send_raw

pytestmark = pytest.mark.integration

MESSAGE = (
    b"From: a@sender.example\r\nTo: user@example.test\r\nSubject: through the proxy\r\n\r\n"
    b"line one\r\n.a line that starts with a dot\r\n\r\nlast line\r\n"
)


def test_mx_delivery_arrives_byte_exact_with_the_upstream_reply(proxy, sink):
    with connect(proxy) as client:
        code, text = client.ehlo("client.test")
        assert code == 250
        assert client.mail("a@sender.example") == (250, b"2.1.0 Ok")  # smtp-sink's own text
        assert client.rcpt("user@example.test") == (250, b"2.1.5 Ok")
        assert client.data(MESSAGE) == (250, b"2.0.0 Ok")
    fields, body = sink.transactions(expected=1)[0]
    assert body == MESSAGE.replace(b"\r\n", b"\n")
    assert fields["X-Mail-Args"] == ["<a@sender.example>"]
    assert fields["X-Rcpt-Args"] == ["<user@example.test>"]
    assert fields["X-Helo-Args"] == ["client.test"]


def test_greeting_is_the_upstreams_and_ehlo_lists_only_shared_extensions(proxy):
    with connect(proxy) as client:
        assert client.ehlo_resp is None
        code, greeting = client.connect("127.0.0.1", proxy.port("mx"))
        assert code == 220 and greeting.startswith(b"smtp-sink")  # smtp-sink's greeting
        code, text = client.ehlo("client.test")
        keywords = [line.split(b" ")[0] for line in text.split(b"\n")[1:]]
        # smtp-sink also offers XCLIENT and XFORWARD: they stay between proxy and upstream.
        assert sorted(keywords) == sorted(
            [b"PIPELINING", b"8BITMIME", b"ENHANCEDSTATUSCODES", b"DSN", b"SIZE", b"STARTTLS"]
        )
        assert b"SIZE 10485760" in text.split(b"\n")


def test_several_messages_in_one_session(proxy, sink):
    with connect(proxy) as client:
        for n in range(3):
            client.sendmail("a@sender.example", ["user@example.test"], b"Subject: %d\r\n\r\nbody\r\n" % n)
    assert sorted(sink.bodies(expected=3)) == [b"Subject: %d\n\nbody\n" % n for n in range(3)]


def test_relaying_to_a_foreign_domain_is_refused_on_mx(proxy, sink):
    with connect(proxy) as client:
        client.ehlo("client.test")
        client.mail("a@sender.example")
        assert client.rcpt("victim@elsewhere.example") == (
            554, b"5.7.1 <victim@elsewhere.example>: Relay access denied"
        )
        assert client.rcpt("user@EXAMPLE.test") == (250, b"2.1.5 Ok")
        assert client.data(b"Subject: relay?\r\n\r\nbody\r\n") == (250, b"2.0.0 Ok")
    # The message went to the local recipient alone: the foreign one never reached
    # the upstream's envelope.
    fields, _ = sink.transactions(expected=1)[0]
    assert fields["X-Rcpt-Args"] == ["<user@EXAMPLE.test>"]


def test_upstream_5xx_on_rcpt_is_relayed_unchanged(make_proxy):
    from tests.support.servers import SmtpSink

    with SmtpSink(reject_rcpt="550 5.1.1 <nobody@example.test>: Recipient unknown here") as rejecting:
        proxy = make_proxy(rejecting.address)
        with connect(proxy) as client:
            client.ehlo("client.test")
            client.mail("a@sender.example")
            assert client.rcpt("nobody@example.test") == (
                550, b"5.1.1 <nobody@example.test>: Recipient unknown here"
            )
            # No recipient was accepted, so DATA has nothing to send.
            assert client.docmd("DATA")[0] == 554


def test_smuggling_attempt_delivers_exactly_one_message(proxy, sink):
    smuggled = (
        b"Subject: outer\r\n\r\nhello\n.\nMAIL FROM:<admin@example.test>\n"
        b"RCPT TO:<user@example.test>\nDATA\nSubject: smuggled\n\nevil\r\n.\r\n"
    )
    with connect(proxy) as client:
        client.ehlo("client.test")
        code, _ = send_raw(client, "a@sender.example", "user@example.test", smuggled)
        assert code == 250
        assert client.noop()[0] == 250  # the session is still in step
    [body] = sink.bodies(expected=1)
    # Every bare LF became a line break; the lone dot line is unstuffed like any other
    # line (as Postfix does), so the smuggled commands stay inside the one message.
    assert body == (
        b"Subject: outer\n\nhello\n\nMAIL FROM:<admin@example.test>\nRCPT TO:<user@example.test>\n"
        b"DATA\nSubject: smuggled\n\nevil\n"
    )
    assert len(sink.messages()) == 1


def test_swaks_mx_delivery(proxy, sink):
    result = run_swaks(
        "--server", f"127.0.0.1:{proxy.port('mx')}", "--to", "user@example.test",
        "--from", "a@sender.example", "--body", "sent by swaks",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok" in result.stdout
    [body] = sink.bodies(expected=1)
    assert b"sent by swaks" in body
