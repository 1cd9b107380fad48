"""Small client-side helpers shared by the integration tests."""

from __future__ import annotations

import base64
import smtplib

from tests.support.tls import client_context


def connect(proxy, listener: str = "mx") -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", proxy.port(listener), timeout=10)


def submission_client(proxy, certs, user: str | None = None, password: str | None = None) -> smtplib.SMTP:
    """A client on the submission listener, after STARTTLS (verified against the test CA)."""
    client = connect(proxy, "submission")
    client.ehlo("client.test")
    client.starttls(context=client_context(certs[0]))
    client.ehlo("client.test")
    if user is not None:
        client.login(user, password)
    return client


def start_transaction(client: smtplib.SMTP) -> None:
    """EHLO, then MAIL and RCPT to the mx listener's local domain, each accepted."""
    client.ehlo("client.test")
    assert client.mail("a@sender.example")[0] == 250
    assert client.rcpt("user@example.test")[0] == 250


def send_raw(client: smtplib.SMTP, mail_from: str, rcpt: str, raw_data: bytes) -> tuple[int, bytes]:
    """MAIL, RCPT, DATA, then exactly `raw_data` on the wire (it must end the DATA
    itself); returns the end-of-data reply."""
    assert client.mail(mail_from)[0] == 250
    assert client.rcpt(rcpt)[0] == 250
    code, _ = client.docmd("DATA")
    assert code == 354
    client.sock.sendall(raw_data)
    return client.getreply()


def auth_plain(client: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN attempt (smtplib's login() tries every mechanism in turn)."""
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return client.docmd("AUTH", f"PLAIN {token}")
