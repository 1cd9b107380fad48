"""client_identity = "proxy": POP3 and IMAP upstream sessions that open with a PROXY
protocol v2 header, against a real Dovecot's haproxy listeners, with poplib and imaplib.

Dovecot takes the header only from `haproxy_trusted_networks`: 127.0.0.5, the proxy's
source address. Its `login_trusted_networks` is that address too, and plays no part
here: the session's address is the client's, 127.0.0.1, which it does not trust.

The proxy listens on 127.0.0.4. Dovecot counts a session whose two ends have one
address as secured: with the client's address and the listener's apart, "secured" in
its log comes from the header's SSL TLV alone. Its Login lines name the ports as well
(rport, lport), so they show the whole of what the header said.
"""

from __future__ import annotations

import imaplib
import poplib
import re
import ssl

import pytest

from tests.support.dovecot import Dovecot
from tests.support.servers import free_port
from tests.support.tls import client_context

pytestmark = pytest.mark.integration

ALICE = "alice@example.test"
USERS = {ALICE: "alice-secret"}  # the proxy's users file has the same password
MESSAGE = b"From: carol@example.test\r\nSubject: one\r\n\r\nfirst body\r\n"
PROXY_HOST = "127.0.0.4"
PROXY_SOURCE = "127.0.0.5"
CLIENT = "127.0.0.1"  # where the kernel connects a client to 127.0.0.4 from


# Login lines that name the ports as well.
LOGIN_LOG_FORMAT = (
    "login_log_format_elements = user=<%u> method=%m rip=%r rport=%{rport} "
    "lip=%l lport=%{lport} mpid=%e %c session=<%{session}>\n"
)


def haproxy_dovecot(*args, tls_after_header: bool = False, **kwargs) -> Dovecot:
    """The harness's Dovecot with its haproxy listeners, trusting the proxy's source;
    with `tls_after_header` they take TLS after the header, as an implicit-TLS upstream
    behind a PROXY header does."""
    return Dovecot(
        *args, haproxy=True, haproxy_ssl=tls_after_header, trusted_networks=f"{PROXY_SOURCE}/32",
        extra_config=LOGIN_LOG_FORMAT, **kwargs,
    )


@pytest.fixture
def dovecot():
    with haproxy_dovecot(USERS, listen="127.0.0.2") as server:
        server.seed(ALICE, [MESSAGE])
        yield server


def start_proxy(make_proxy, certs, protocol: str, upstream: dict):
    """The proxy with three `protocol` listeners on PROXY_HOST: "starttls", "implicit"
    (TLS from the start) and "plaintext" (plaintext logins allowed)."""
    _, cert, key = certs
    tls = {"cert_file": str(cert), "key_file": str(key)}
    listeners = [
        {"name": "starttls", "tls": "starttls", **tls},
        {"name": "implicit", "tls": "implicit", **tls},
        {"name": "plaintext", "tls": "none", "allow_plaintext_auth": True},
    ]
    for listener in listeners:
        listener.update(protocol=protocol, upstream="store", address=f"{PROXY_HOST}:{free_port(PROXY_HOST)}")
    store = {"source_address": PROXY_SOURCE, "client_identity": "proxy",
             "connect_timeout": 3.0, "reply_timeout": 10.0, **upstream}
    return make_proxy("127.0.0.1:9", upstreams={"store": store}, listeners=listeners)


def haproxy_upstream(dovecot, protocol: str) -> dict:
    return {"address": f"{dovecot.listen}:{getattr(dovecot, f'{protocol}_haproxy_port')}"}


def login_line(protocol: str, client_port: int, proxy, listener: str, security: str) -> re.Pattern:
    """Dovecot's Login line for alice: from the client's address and port, to the
    proxy listener's address and port, and its word for the session's security."""
    return re.compile(
        rf"{protocol}-login: Info: Login: user=<{re.escape(ALICE)}>, method=PLAIN, "
        rf"rip={re.escape(CLIENT)}, rport={client_port}, "
        rf"lip={re.escape(PROXY_HOST)}, lport={proxy.port(listener)}, mpid=\d+, {security},"
    )


def tls_context(certs) -> ssl.SSLContext:
    """Verifies the proxy's certificate against the test CA; the certificate names
    127.0.0.1, not PROXY_HOST, so the name is not checked."""
    context = client_context(certs[0])
    context.check_hostname = False
    return context


def pop3_client(proxy, certs, listener: str) -> poplib.POP3:
    if listener == "implicit":
        return poplib.POP3_SSL(PROXY_HOST, proxy.port(listener), context=tls_context(certs), timeout=10)
    client = poplib.POP3(PROXY_HOST, proxy.port(listener), timeout=10)
    if listener == "starttls":
        client.stls(tls_context(certs))
    return client


def imap_client(proxy, certs, listener: str) -> imaplib.IMAP4:
    if listener == "implicit":
        return imaplib.IMAP4_SSL(PROXY_HOST, proxy.port(listener), ssl_context=tls_context(certs), timeout=10)
    client = imaplib.IMAP4(PROXY_HOST, proxy.port(listener), timeout=10)
    if listener == "starttls":
        client.starttls(tls_context(certs))
    return client


def read_mailbox(protocol: str, proxy, certs, listener: str) -> int:
    """Log alice in through `listener`, look at her mailbox, log out: the client's port."""
    if protocol == "pop3":
        client = pop3_client(proxy, certs, listener)
        client.user(ALICE)
        assert client.pass_("alice-secret").startswith(b"+OK")
        assert client.stat() == (1, len(MESSAGE))
        port = client.sock.getsockname()[1]
        client.quit()
    else:
        client = imap_client(proxy, certs, listener)
        assert client.login(ALICE, "alice-secret")[0] == "OK"
        assert client.select("INBOX") == ("OK", [b"1"])
        port = client.sock.getsockname()[1]
        client.logout()
    return port


@pytest.mark.parametrize("listener", ["starttls", "implicit"])
@pytest.mark.parametrize("protocol", ["pop3", "imap"])
def test_a_client_on_tls_is_secured_at_dovecot_under_its_own_address(dovecot, make_proxy, certs, protocol, listener):
    proxy = start_proxy(make_proxy, certs, protocol, haproxy_upstream(dovecot, protocol))
    client_port = read_mailbox(protocol, proxy, certs, listener)
    # Dovecot refuses a plaintext login on a session it does not count as secured:
    # the login worked because the header's SSL TLV said the client is on TLS.
    dovecot.wait_for_log(login_line(protocol, client_port, proxy, listener, "secured"))


@pytest.mark.parametrize("protocol", ["pop3", "imap"])
def test_a_plaintext_client_is_not_claimed_to_be_on_tls(dovecot, make_proxy, certs, protocol):
    # Dovecot wants TLS for plaintext logins (disable_plaintext_auth): with no TLS on
    # either hop, it refuses the proxy's login, and the client hears of a failure.
    proxy = start_proxy(make_proxy, certs, protocol, haproxy_upstream(dovecot, protocol))
    if protocol == "pop3":
        client = pop3_client(proxy, certs, "plaintext")
        client.user(ALICE)
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] Temporary authentication failure"):
            client.pass_("alice-secret")
        client.quit()
    else:
        client = imap_client(proxy, certs, "plaintext")
        with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\] Temporary authentication failure"):
            client.login(ALICE, "alice-secret")
        client.logout()
    # Dovecot had the header (the session is the client's), and no login came of it.
    dovecot.wait_for_log(re.compile(rf"{protocol}-login: Info: .*: user=<>, rip={re.escape(CLIENT)}, "
                                    rf"rport=\d+, lip={re.escape(PROXY_HOST)}, "))
    assert not re.search(rf"Login: .*rip={re.escape(CLIENT)},", dovecot.log())


@pytest.mark.parametrize("protocol", ["pop3", "imap"])
def test_header_before_the_tls_of_an_implicit_tls_upstream(make_proxy, certs, protocol):
    ca, cert, key = certs
    # On 127.0.0.1: the test certificate names that address, and the proxy verifies it.
    with haproxy_dovecot(USERS, tls=(cert, key), tls_after_header=True) as dovecot:
        dovecot.seed(ALICE, [MESSAGE])
        upstream = {**haproxy_upstream(dovecot, protocol), "tls": "implicit", "ca_file": str(ca)}
        proxy = start_proxy(make_proxy, certs, protocol, upstream)
        client_port = read_mailbox(protocol, proxy, certs, "starttls")
        # "TLS": Dovecot's own TLS with the proxy, on the session the header described.
        dovecot.wait_for_log(login_line(protocol, client_port, proxy, "starttls", "TLS"))
