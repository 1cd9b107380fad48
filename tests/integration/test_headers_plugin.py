"""The headers plugin in the real proxy, in front of a recording upstream: a message with
the GTUBE test string is refused at the end of its data and never reaches the mail
server; a clean one, sent next in the same session, arrives exactly as it was sent."""

import base64
import io
import smtplib
import zipfile

import pytest

from tests.support.recorder import RecordingUpstream

pytestmark = pytest.mark.integration

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SPAM = b"Subject: test\r\n\r\nThis is the GTUBE:\r\n" + GTUBE + b"\r\n"


def clean_message() -> bytes:
    """A multipart message with a quoted-printable text, a zip attachment and a line
    that starts with a dot: all of it must arrive unchanged."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("report.txt", "Quarterly figures.")
    attachment = base64.encodebytes(buffer.getvalue()).replace(b"\n", b"\r\n")
    return (
        b"From: alice@sender.test\r\n"
        b"To: rcpt@example.test\r\n"
        b"Subject: =?utf-8?q?Quarterly_r=C3=A9port?=\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="SEP"\r\n'
        b"\r\n"
        b"--SEP\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n"
        b"Caf=C3=A9 at ten.\r\n"
        b".a line that starts with a dot\r\n"
        b"--SEP\r\n"
        b'Content-Type: application/zip; name="report.zip"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n" + attachment +
        b"--SEP--\r\n"
    )


@pytest.fixture
def upstream():
    with RecordingUpstream() as server:
        yield server


def test_gtube_is_refused_and_a_clean_message_arrives_unchanged(make_proxy, upstream):
    proxy = make_proxy(
        upstream.address,
        plugins={"enabled": ["access", "headers"]},
        plugin={"headers": {"skip_clients": []}},  # the client comes from loopback
    )
    clean = clean_message()
    with smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=30) as client:
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@sender.test", ["rcpt@example.test"], SPAM)
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            550, b"5.7.1 Message content rejected (GTUBE)")
        assert client.sendmail("alice@sender.test", ["rcpt@example.test"], clean) == {}
    # The recorder keeps a message as it came: dot-stuffed, without its end marker's CRLF.
    assert upstream.messages == [clean.replace(b"\r\n.", b"\r\n..").removesuffix(b"\r\n")]
    assert GTUBE not in upstream.received
    assert proxy.metric("mailproxy_plugin_checks_total", plugin="headers", check="GTUBE", result="matched") == 1
    assert proxy.metric("mailproxy_plugin_errors_total", plugin="headers") == 0


# A parameter list the email package splits in time that grows with its square:
# seconds for each look at it. No mail program writes one.
ABUSIVE = (b"From: alice@sender.test\r\nTo: rcpt@example.test\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: text/plain; x="' + b";" * 60_000 + b'"\r\n\r\nhello\r\n')
# One the parser gives up on (a malformed RFC 2231 boundary), with an 8-bit byte.
UNPARSABLE = (b"Subject: test\r\nContent-Type: multipart/mixed; boundary*=*=utf-8''a; boundary*1=\"b\"\r\n\r\n"
              b"--ab\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nCaf\xc3\xa9 " + GTUBE + b"\r\n--ab--\r\n")


def test_messages_built_against_the_parser_are_judged_without_it(make_proxy, upstream):
    proxy = make_proxy(
        upstream.address,
        plugins={"enabled": ["access", "headers"]},
        plugin={"headers": {"skip_clients": [], "mime_limit": "reject", "timeout": 5.0}},
    )
    with smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=30) as client:
        client.ehlo("client.test")
        for message, symbol in ((ABUSIVE, "MIME_LIMIT"), (UNPARSABLE, "GTUBE")):
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("alice@sender.test", ["rcpt@example.test"], message)
            assert (refused.value.smtp_code, refused.value.smtp_error) == (
                550, f"5.7.1 Message content rejected ({symbol})".encode())
    assert upstream.messages == []
    assert proxy.metric("mailproxy_plugin_checks_total", plugin="headers", check="parse", result="skipped") == 1
    assert proxy.metric("mailproxy_plugin_errors_total", plugin="headers") == 0
