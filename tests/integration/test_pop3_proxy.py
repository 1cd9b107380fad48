"""POP3 through the proxy to a real Dovecot, with poplib and raw sockets as clients.

Dovecot listens on 127.0.0.2 and trusts only 127.0.0.5, the proxy's source address:
so "Dovecot logged rip=127.0.0.1" shows the proxy told it who the client was (it
would log 127.0.0.5 otherwise), and Dovecot takes the proxy's plaintext login as
secured, as it would on a private network.
"""

from __future__ import annotations

import base64
import poplib
import re
import smtplib
import time

import pytest

from tests.support.clients import auth_plain
from tests.support.dovecot import Dovecot
from tests.support.mailstore_clients import ImapRaw, Pop3Raw
from tests.support.scripted_pop3 import CLOSE, ScriptedPop3
from tests.support.tls import client_context

pytestmark = pytest.mark.integration

USERS = {"alice@example.test": "alice-secret", "bob@example.test": "bob-secret"}
MESSAGES = [
    b"From: carol@example.test\r\nSubject: one\r\n\r\nfirst body\r\n",
    # A line that starts with a dot is dot-stuffed on the wire: it must arrive as sent.
    b"From: dave@example.test\r\nSubject: two\r\n\r\n.leading dot\r\n..two dots\r\nend\r\n",
]


@pytest.fixture
def dovecot():
    with Dovecot(USERS, listen="127.0.0.2", trusted_networks="127.0.0.5/32") as server:
        server.seed("alice@example.test", MESSAGES)
        yield server


def pop3_config(dovecot, certs, **listener):
    _, cert, key = certs
    tls = {"cert_file": str(cert), "key_file": str(key)}
    return {
        "upstreams": {"store": {
            "address": f"127.0.0.2:{dovecot.pop3_port}", "source_address": "127.0.0.5",
            "connect_timeout": 3.0, "reply_timeout": 5.0,
        }},
        "listeners": [
            {"name": "pop3", "protocol": "pop3", "tls": "starttls", "upstream": "store", **tls, **listener},
            {"name": "pop3s", "protocol": "pop3", "tls": "implicit", "upstream": "store", **tls, **listener},
            {"name": "submission", "mode": "submission", "tls": "starttls", "upstream": "sink", **tls},
        ],
    }


@pytest.fixture
def pop3_proxy(dovecot, make_proxy, certs):
    return make_proxy("127.0.0.1:9", **pop3_config(dovecot, certs))


def login(proxy, certs, user="alice@example.test", password="alice-secret") -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", proxy.port("pop3"), timeout=10)
    client.stls(client_context(certs[0]))
    client.user(user)
    client.pass_(password)
    return client


def test_a_mailbox_session_after_stls(pop3_proxy, dovecot, certs):
    client = login(pop3_proxy, certs)
    assert client.stat() == (2, sum(len(m) for m in MESSAGES))
    assert [line.split()[0] for line in client.list()[1]] == [b"1", b"2"]
    assert len(client.uidl()[1]) == 2
    # RETR's body comes back byte for byte, dot-stuffed lines included.
    assert b"\r\n".join(client.retr(2)[1]) + b"\r\n" == MESSAGES[1]
    assert client.top(1, 0)[1] == [b"From: carol@example.test", b"Subject: one", b""]
    assert client.dele(1).startswith(b"+OK")
    client.quit()
    again = login(pop3_proxy, certs)
    assert again.stat()[0] == 1  # the deletion was committed at QUIT
    again.quit()
    # And the store itself shows it over IMAP (from its own address, which it trusts).
    with ImapRaw("127.0.0.2", dovecot.imap_port, source="127.0.0.2") as imap:
        imap.line()
        imap.command(b"a1 LOGIN alice@example.test alice-secret")
        assert b"* 1 EXISTS\r\n" in imap.command(b"a2 EXAMINE INBOX")
    # Dovecot saw the real client, and the proxy's session id as its own.
    dovecot.wait_for_log(re.compile(r"pop3-login: Info: Login: user=<alice@example.test>, .*rip=127\.0\.0\.1, .*session=<[0-9a-f]{10}>"))


def test_leaving_without_quit_deletes_nothing(pop3_proxy, certs):
    client = login(pop3_proxy, certs)
    assert client.dele(1).startswith(b"+OK")
    client.close()  # no QUIT: the upstream must not hear one either
    again = login(pop3_proxy, certs)
    assert again.stat()[0] == 2
    again.quit()


def test_implicit_tls_listener(pop3_proxy, certs):
    client = poplib.POP3_SSL("127.0.0.1", pop3_proxy.port("pop3s"), context=client_context(certs[0]), timeout=10)
    client.user("alice@example.test")
    client.pass_("alice-secret")
    assert client.stat()[0] == 2
    client.quit()


def test_wrong_password_is_refused_and_counted(pop3_proxy, certs):
    client = poplib.POP3("127.0.0.1", pop3_proxy.port("pop3"), timeout=10)
    client.stls(client_context(certs[0]))
    client.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Authentication failed"):
        client.pass_("wrong")
    client.user("alice@example.test")
    assert client.pass_("alice-secret").startswith(b"+OK")
    client.quit()
    assert pop3_proxy.metric("mailproxy_auth_attempts_total", listener="pop3", mechanism="USER", result="failure") == 1
    assert pop3_proxy.metric("mailproxy_auth_attempts_total", listener="pop3", mechanism="USER", result="success") == 1


def test_plaintext_login_is_refused_before_stls(pop3_proxy, certs):
    with Pop3Raw("127.0.0.1", pop3_proxy.port("pop3")) as client:
        assert client.line().startswith(b"+OK")
        client.send(b"CAPA\r\n")
        assert client.line().startswith(b"+OK")
        capabilities = client.multiline().split(b"\r\n")
        assert b"STLS" in capabilities and b"USER" not in capabilities
        assert client.command(b"USER alice@example.test").startswith(b"-ERR [AUTH] Plaintext")
        assert client.command(b"AUTH PLAIN " + plain("alice@example.test", "alice-secret")).startswith(
            b"-ERR [AUTH] Plaintext"
        )
        assert client.starttls(client_context(certs[0])).startswith(b"+OK")
        client.send(b"CAPA\r\n")
        assert client.line().startswith(b"+OK")
        capabilities = client.multiline().split(b"\r\n")
        assert b"USER" in capabilities and b"STLS" not in capabilities


def test_commands_pipelined_in_plaintext_after_stls_are_dropped(pop3_proxy, certs):
    with Pop3Raw("127.0.0.1", pop3_proxy.port("pop3")) as client:
        client.line()
        client.send(b"STLS\r\nCAPA\r\n")  # the CAPA is injected before the handshake
        assert client.line().startswith(b"+OK")
        client.tls_handshake(client_context(certs[0]))
        # Had the CAPA been kept, its answer would come first.
        assert client.command(b"NOOP") == b"-ERR Not logged in.\r\n"


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


def test_auth_plain_with_and_without_an_initial_response(pop3_proxy, certs):
    with Pop3Raw("127.0.0.1", pop3_proxy.port("pop3")) as client:
        client.line()
        client.starttls(client_context(certs[0]))
        assert client.command(b"AUTH PLAIN " + plain("alice@example.test", "alice-secret")).startswith(b"+OK")
        assert client.command(b"STAT").startswith(b"+OK 2 ")
    with Pop3Raw("127.0.0.1", pop3_proxy.port("pop3")) as client:
        client.line()
        client.starttls(client_context(certs[0]))
        assert client.command(b"AUTH PLAIN") == b"+ \r\n"
        assert client.command(plain("bob@example.test", "bob-secret")).startswith(b"+OK")
        assert client.command(b"STAT").startswith(b"+OK 0 ")
    with Pop3Raw("127.0.0.1", pop3_proxy.port("pop3")) as client:
        client.line()
        client.starttls(client_context(certs[0]))
        assert client.command(b"AUTH PLAIN") == b"+ \r\n"
        assert client.command(b"*").startswith(b"-ERR")  # cancelled
        assert client.command(b"AUTH CRAM-MD5").startswith(b"-ERR")  # only what shows the password


def test_commands_pipelined_after_the_login_go_to_the_mailbox(pop3_proxy, certs):
    with Pop3Raw("127.0.0.1", pop3_proxy.port("pop3")) as client:
        client.line()
        client.starttls(client_context(certs[0]))
        client.send(b"USER alice@example.test\r\nPASS alice-secret\r\nSTAT\r\nQUIT\r\n")
        replies = [client.line() for _ in range(4)]
        assert [r[:3] for r in replies] == [b"+OK"] * 4
        assert replies[2].startswith(b"+OK 2 ")


def test_login_failures_count_across_protocols(dovecot, sink, make_proxy, certs):
    # Two wrong passwords over SMTP and one over POP3 reach max_failures (3): the next
    # POP3 login from that address is throttled, the correct password notwithstanding.
    proxy = make_proxy(sink.address, **pop3_config(dovecot, certs))
    smtp = smtplib.SMTP("127.0.0.1", proxy.port("submission"), timeout=10)
    smtp.starttls(context=client_context(certs[0]))
    smtp.ehlo("client.test")
    for _ in range(2):
        assert auth_plain(smtp, "alice@example.test", "wrong")[0] == 535
    smtp.close()
    client = poplib.POP3("127.0.0.1", proxy.port("pop3"), timeout=10)
    client.stls(client_context(certs[0]))
    client.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match="AUTH"):
        client.pass_("wrong")
    client.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] Too many authentication failures"):
        client.pass_("alice-secret")


def test_retention_refuses_dele_for_a_protected_account_only(dovecot, make_proxy, certs):
    proxy = make_proxy(
        "127.0.0.1:9", **pop3_config(dovecot, certs),
        plugins={"enabled": ["access", "retention"]}, plugin={"retention": {"accounts": ["alice@example.test"]}},
    )
    client = login(proxy, certs)
    with pytest.raises(poplib.error_proto, match="Deletion is not permitted for this account"):
        client.dele(1)
    client.quit()
    again = login(proxy, certs)
    assert again.stat()[0] == 2
    again.quit()
    dovecot.seed("bob@example.test", MESSAGES[:1])
    bob = login(proxy, certs, "bob@example.test", "bob-secret")
    assert bob.dele(1).startswith(b"+OK")
    bob.quit()


def test_upstream_backend_lets_the_mail_store_check_the_password(dovecot, make_proxy, certs):
    proxy = make_proxy("127.0.0.1:9", auth={"backends": ["upstream"]}, **pop3_config(dovecot, certs))
    client = poplib.POP3("127.0.0.1", proxy.port("pop3"), timeout=10)
    client.stls(client_context(certs[0]))
    client.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.pass_("wrong")
    client.user("alice@example.test")
    # The upstream's own answer to the login reaches the client.
    assert client.pass_("alice-secret") == b"+OK Logged in."
    assert client.stat()[0] == 2
    client.quit()


def test_upstream_down_is_a_temporary_failure(make_proxy, certs):
    with Dovecot(USERS, listen="127.0.0.2", trusted_networks="127.0.0.5/32") as stopped:
        config = pop3_config(stopped, certs)
    proxy = make_proxy("127.0.0.1:9", **config)
    client = poplib.POP3("127.0.0.1", proxy.port("pop3"), timeout=10)
    client.stls(client_context(certs[0]))
    client.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
        client.pass_("alice-secret")


def test_pipe_after_login(dovecot, make_proxy, certs):
    proxy = make_proxy("127.0.0.1:9", **pop3_config(dovecot, certs, after_login="pipe"))
    with Pop3Raw("127.0.0.1", proxy.port("pop3")) as client:
        client.line()
        client.starttls(client_context(certs[0]))
        client.send(b"USER alice@example.test\r\nPASS alice-secret\r\nSTAT\r\nRETR 2\r\n")
        assert [client.line()[:3] for _ in range(3)] == [b"+OK"] * 3
        assert client.line().startswith(b"+OK")
        assert client.multiline() == MESSAGES[1].replace(b"\r\n.", b"\r\n..")
        assert client.command(b"QUIT").startswith(b"+OK")
    assert proxy.metric("mailproxy_commands_total", protocol="pop3", verb="RETR") == 0


def test_upstream_backend_waits_out_the_stores_own_failure_delays(make_proxy, certs):
    # Dovecot as shipped answers a wrong password after 2 s and then delays every login
    # from that address; a correct password after two wrong ones must still get in.
    with Dovecot(USERS, listen="127.0.0.2", trusted_networks="127.0.0.5/32", stock_auth_delays=True) as dovecot:
        config = pop3_config(dovecot, certs)
        config["upstreams"]["store"]["reply_timeout"] = 30.0
        proxy = make_proxy("127.0.0.1:9", auth={"backends": ["upstream"], "max_failures": 10}, **config)
        client = poplib.POP3("127.0.0.1", proxy.port("pop3"), timeout=60)
        client.stls(client_context(certs[0]))
        for _ in range(2):
            client.user("alice@example.test")
            with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
                client.pass_("wrong")
        client.user("alice@example.test")
        assert client.pass_("alice-secret").startswith(b"+OK")
        client.quit()


def test_a_failed_stls_handshake_ends_the_session_quietly(pop3_proxy):
    # The proxy fixture fails the test on any traceback in the proxy's log.
    with Pop3Raw("127.0.0.1", pop3_proxy.port("pop3")) as client:
        client.line()
        assert client.command(b"STLS").startswith(b"+OK")
        client.send(b"this is no TLS handshake\r\n" * 20)
        assert client.until_closed() == b""


def test_idle_time_before_a_command_is_not_the_command_deadline(dovecot, make_proxy, certs):
    proxy = make_proxy("127.0.0.1:9", **pop3_config(dovecot, certs, idle_timeout=30.0, command_timeout=1.0))
    with Pop3Raw("127.0.0.1", proxy.port("pop3")) as client:
        client.line()
        time.sleep(2.5)  # idle, within idle_timeout: no command has begun
        assert client.command(b"CAPA").startswith(b"+OK")
        client.multiline()
        client.send(b"CA")  # a command begun and not finished within command_timeout
        assert client.until_closed().startswith(b"-ERR Timeout exceeded")


def scripted_proxy(make_proxy, certs, upstream):
    _, cert, key = certs
    return make_proxy(
        "127.0.0.1:9",
        upstreams={"store": {"address": upstream.address, "client_identity": "none", "reply_timeout": 5.0}},
        listeners=[{"name": "pop3", "protocol": "pop3", "upstream": "store", "allow_plaintext_auth": True}],
    )


def logged_in_raw(proxy) -> Pop3Raw:
    client = Pop3Raw("127.0.0.1", proxy.port("pop3"))
    client.line()
    client.send(b"USER alice@example.test\r\nPASS alice-secret\r\n")
    assert client.line().startswith(b"+OK") and client.line().startswith(b"+OK")
    return client


def test_an_upstream_that_dies_mid_body_cuts_the_reply_off_without_an_error_line(make_proxy, certs):
    with ScriptedPop3({b"RETR": (b"+OK 100 octets\r\nFrom: a@b\r\n\r\npartial bo", CLOSE)}) as upstream:
        proxy = scripted_proxy(make_proxy, certs, upstream)
        with logged_in_raw(proxy) as client:
            client.send(b"RETR 1\r\n")
            received = client.until_closed()
    # The client must not take an -ERR for the message's last line, or the reply for whole.
    assert received.startswith(b"+OK 100 octets\r\n") and b"-ERR" not in received
    assert not received.endswith(b"\r\n.\r\n")


def test_bytes_the_upstream_sent_unasked_end_the_session(make_proxy, certs):
    with ScriptedPop3({b"STAT": b"+OK 1 10\r\n+OK injected\r\n", b"NOOP": b"+OK\r\n"}) as upstream:
        proxy = scripted_proxy(make_proxy, certs, upstream)
        with logged_in_raw(proxy) as client:
            assert client.command(b"STAT") == b"+OK 1 10\r\n"
            # Taken for NOOP's reply, the stray line would shift every later reply by one.
            assert client.command(b"NOOP").startswith(b"-ERR [SYS/TEMP] Upstream failure")


def test_the_upstreams_own_errors_do_not_use_up_the_clients_error_budget(make_proxy, certs):
    with ScriptedPop3({b"DELE": b"-ERR Message is deleted.\r\n"}) as upstream:
        _, cert, key = certs
        proxy = make_proxy(
            "127.0.0.1:9",
            upstreams={"store": {"address": upstream.address, "client_identity": "none"}},
            listeners=[{"name": "pop3", "protocol": "pop3", "upstream": "store", "allow_plaintext_auth": True,
                        "max_errors": 3, "soft_error_limit": 100}],
        )
        with logged_in_raw(proxy) as client:
            for _ in range(5):
                assert client.command(b"DELE 1") == b"-ERR Message is deleted.\r\n"
            # Still in the session after five -ERR (max_errors 3): QUIT, which commits the
            # deletions, reaches the store.
            assert client.command(b"QUIT") == b"+OK Bye.\r\n"


def test_a_client_must_log_in_within_login_timeout_however_busy(dovecot, make_proxy, certs):
    proxy = make_proxy("127.0.0.1:9", **pop3_config(dovecot, certs, login_timeout=2.0))
    with Pop3Raw("127.0.0.1", proxy.port("pop3")) as client:
        client.line()
        started = time.monotonic()
        replies = b""
        for _ in range(20):  # a command every 0.25 s: never idle, never logged in
            client.send(b"NOOP\r\n")
            line = client.line()
            if not line.startswith(b"-ERR Not logged in"):
                replies = line + client.until_closed()
                break
            time.sleep(0.25)
        assert replies.startswith(b"-ERR Timeout exceeded")
        assert time.monotonic() - started < 4


def test_an_upstream_that_does_not_trust_the_proxy_is_named_once_and_counted(make_proxy, certs):
    # Dovecot trusts nobody here: no [XCLIENT] in its greeting, so the proxy says so
    # (its answer to XCLIENT would be a useless "+OK ... ignoring").
    with Dovecot(USERS, listen="127.0.0.2", trusted_networks="127.0.0.9/32", disable_plaintext_auth=False) as dovecot:
        proxy = make_proxy("127.0.0.1:9", **pop3_config(dovecot, certs))
        for _ in range(2):
            login(proxy, certs).quit()
    assert proxy.metric("mailproxy_upstream_identity_missing_total", upstream="store") == 2
    assert proxy.log().count("does not offer XCLIENT to the proxy") == 1
