"""IMAP through the proxy to a real Dovecot, with imaplib and raw sockets as clients.

Dovecot listens on 127.0.0.2 and trusts only 127.0.0.5, the proxy's source address: so
"Dovecot logged rip=127.0.0.1" shows the proxy's ID told it who the client was.
"""

from __future__ import annotations

import base64
import concurrent.futures
import imaplib
import json
import poplib
import re
import socket
import time
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot
from tests.support.mailstore_clients import ImapRaw
from tests.support.tls import client_context

pytestmark = pytest.mark.integration

USERS = {"alice@example.test": "alice-secret", "bob@example.test": "bob-secret"}
MESSAGE = b"From: carol@example.test\r\nSubject: one\r\n\r\nfirst body\r\n"


def imap_config(dovecot, certs, **listener):
    _, cert, key = certs
    tls = {"cert_file": str(cert), "key_file": str(key)}
    return {
        "upstreams": {"store": {
            "address": f"127.0.0.2:{dovecot.imap_port}", "source_address": "127.0.0.5",
            "connect_timeout": 3.0, "reply_timeout": 10.0,
        }},
        "listeners": [
            {"name": "imap", "protocol": "imap", "tls": "starttls", "upstream": "store", **tls, **listener},
            {"name": "imaps", "protocol": "imap", "tls": "implicit", "upstream": "store", **tls, **listener},
        ],
    }


@pytest.fixture
def dovecot():
    with Dovecot(USERS, listen="127.0.0.2", trusted_networks="127.0.0.5/32") as server:
        server.seed("alice@example.test", [MESSAGE])
        yield server


@pytest.fixture
def imap_proxy(dovecot, make_proxy, certs):
    return make_proxy("127.0.0.1:9", **imap_config(dovecot, certs))


def login(proxy, certs, user="alice@example.test", password="alice-secret") -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", proxy.port("imap"), timeout=10)
    client.starttls(client_context(certs[0]))
    client.login(user, password)
    return client


def raw_client(proxy, certs) -> ImapRaw:
    client = ImapRaw("127.0.0.1", proxy.port("imap"))
    assert client.line().startswith(b"* OK ")
    client.starttls(client_context(certs[0]))
    return client


def test_a_mailbox_session_after_starttls(imap_proxy, dovecot, certs):
    client = login(imap_proxy, certs)
    assert client.select("INBOX") == ("OK", [b"1"])
    assert client.search(None, "ALL") == ("OK", [b"1"])
    status, data = client.fetch("1", "(BODY.PEEK[])")
    assert status == "OK" and data[0][1] == MESSAGE
    assert client.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert client.expunge() == ("OK", [b"1"])
    assert client.select("INBOX") == ("OK", [b"0"])
    client.logout()
    # The ID reached a trusting Dovecot: it logged the real client's address (the
    # proxy's would be 127.0.0.5), and the proxy's session id as its own.
    dovecot.wait_for_log(re.compile(r"imap-login: Info: Login: user=<alice@example.test>, .*rip=127\.0\.0\.1, .*session=<[0-9a-f]{10}>"))


def test_append_of_5_mb_and_fetch_back_byte_identical(imap_proxy, certs):
    body = b"".join(b"line %07d of a big message\r\n" % i for i in range(180_000))
    message = b"From: big@example.test\r\nSubject: big\r\n\r\n" + body
    assert len(message) > 5_000_000
    client = login(imap_proxy, certs)
    status, _ = client.append("INBOX", None, None, message)  # a sync literal: the upstream's "+" relayed
    assert status == "OK"
    client.select("INBOX")
    status, data = client.fetch("2", "(BODY.PEEK[])")
    assert status == "OK" and data[0][1] == message
    client.logout()


def test_implicit_tls_listener(imap_proxy, certs):
    client = imaplib.IMAP4_SSL("127.0.0.1", imap_proxy.port("imaps"), ssl_context=client_context(certs[0]), timeout=10)
    client.login("alice@example.test", "alice-secret")
    assert client.select("INBOX") == ("OK", [b"1"])
    client.logout()


def test_wrong_password_and_plaintext_before_starttls(imap_proxy, certs):
    with ImapRaw("127.0.0.1", imap_proxy.port("imap")) as client:
        greeting = client.line()
        assert b"LOGINDISABLED" in greeting and b"STARTTLS" in greeting and b"AUTH=PLAIN" not in greeting
        reply = client.command(b"a1 LOGIN alice@example.test alice-secret")
        assert reply[-1].startswith(b"a1 NO [PRIVACYREQUIRED]")
        client.starttls(client_context(certs[0]))
        capability = client.command(b"a2 CAPABILITY")
        assert b"AUTH=PLAIN" in capability[0] and b"STARTTLS" not in capability[0]
        assert client.command(b"a3 LOGIN alice@example.test wrong")[-1].startswith(b"a3 NO [AUTHENTICATIONFAILED]")
        ok = client.command(b"a4 LOGIN alice@example.test alice-secret")[-1]
        # The upstream's own OK, with the client's tag, and a capability list without
        # what the proxy does not pass on.
        assert ok.startswith(b"a4 OK [CAPABILITY IMAP4rev1") and b"Logged in" in ok
        assert b"STARTTLS" not in ok and b"AUTH=" not in ok and b"LOGINDISABLED" not in ok


def test_starttls_drops_what_was_pipelined_in_plaintext(imap_proxy, certs):
    with ImapRaw("127.0.0.1", imap_proxy.port("imap")) as client:
        client.line()
        client.send(b"t1 STARTTLS\r\nt2 CAPABILITY\r\n")  # t2 injected before the handshake
        assert client.line().startswith(b"t1 OK")
        client.tls_handshake(client_context(certs[0]))
        assert client.command(b"t3 NOOP") == [b"t3 OK NOOP completed.\r\n"]


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


def test_authenticate_plain_and_login_with_literals(imap_proxy, certs):
    with raw_client(imap_proxy, certs) as client:
        reply = client.command(b"a1 AUTHENTICATE PLAIN " + plain("alice@example.test", "alice-secret"))
        assert reply[-1].startswith(b"a1 OK")
        assert client.command(b"a2 SELECT INBOX")[-1].startswith(b"a2 OK")
    with raw_client(imap_proxy, certs) as client:
        client.send(b"b1 AUTHENTICATE PLAIN\r\n")
        assert client.line() == b"+ \r\n"
        client.send(plain("bob@example.test", "bob-secret") + b"\r\n")
        assert client.until_tagged(b"b1")[-1].startswith(b"b1 OK")
    with raw_client(imap_proxy, certs) as client:
        client.send(b"c1 LOGIN {18}\r\n")
        assert client.line().startswith(b"+")
        client.send(b"alice@example.test {12}\r\n")
        assert client.line().startswith(b"+")
        client.send(b"alice-secret\r\n")
        assert client.until_tagged(b"c1")[-1].startswith(b"c1 OK")
        # After the login a small sync literal is the proxy's to take, and reaches the
        # upstream as a non-sync one: the client sees one "+" and one answer.
        client.send(b"c2 SELECT {5}\r\n")
        assert client.line() == b"+ OK\r\n"
        client.send(b"INBOX\r\n")
        reply = client.until_tagged(b"c2")
        assert reply[-1].startswith(b"c2 OK") and not any(line.startswith(b"+") for line in reply)
        # A non-sync literal streams without waiting.
        client.send(b"c3 APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
        assert client.until_tagged(b"c3")[-1].startswith(b"c3 OK")


def test_idle_relays_what_another_session_delivers(imap_proxy, dovecot, certs):
    with raw_client(imap_proxy, certs) as client:
        client.command(b"a1 LOGIN alice@example.test alice-secret")
        client.command(b"a2 SELECT INBOX")
        client.send(b"a3 IDLE\r\n")
        assert client.line().startswith(b"+ ")
        dovecot.seed("alice@example.test", [MESSAGE])
        line = client.line()
        while b"EXISTS" not in line:
            line = client.line()
        assert line == b"* 2 EXISTS\r\n"
        client.send(b"DONE\r\n")
        assert client.until_tagged(b"a3")[-1].startswith(b"a3 OK")
        assert client.command(b"a4 NOOP")[-1].startswith(b"a4 OK")


def test_compress_is_refused_and_not_offered(make_proxy, certs):
    with Dovecot(USERS, listen="127.0.0.2", trusted_networks="127.0.0.5/32", imap_compress=True) as dovecot:
        proxy = make_proxy("127.0.0.1:9", **imap_config(dovecot, certs))
        with raw_client(proxy, certs) as client:
            ok = client.command(b"a1 LOGIN alice@example.test alice-secret")[-1]
            assert b"COMPRESS" not in ok
            capability = client.command(b"a2 CAPABILITY")
            assert b"IMAP4rev1" in capability[0] and b"COMPRESS" not in capability[0]
            assert client.command(b"a3 COMPRESS DEFLATE")[-1].startswith(b"a3 NO [CANNOT]")
            assert client.command(b"a4 NOOP")[-1].startswith(b"a4 OK")


def test_commands_the_proxy_answers_after_login(imap_proxy, certs):
    with raw_client(imap_proxy, certs) as client:
        client.command(b"a1 LOGIN alice@example.test alice-secret")
        assert client.command(b"a2 LOGIN alice@example.test alice-secret")[-1].startswith(b"a2 BAD")
        assert client.command(b"a3 STARTTLS")[-1].startswith(b"a3 BAD")
        assert client.command(b"a4 LOGOUT")[-1].startswith(b"a4 OK")


def test_retention_keeps_a_protected_account_from_deleting(make_proxy, certs):
    trash = {"Papierkorb": "\\Trash"}  # the trash under a name retention is not told
    with Dovecot(USERS, listen="127.0.0.2", trusted_networks="127.0.0.5/32", mailboxes=trash) as dovecot:
        dovecot.seed("alice@example.test", [MESSAGE, MESSAGE])
        dovecot.seed("bob@example.test", [MESSAGE])
        proxy = make_proxy(
            "127.0.0.1:9", **imap_config(dovecot, certs),
            plugins={"enabled": ["access", "retention"]}, plugin={"retention": {"accounts": ["alice@example.test"]}},
        )
        with raw_client(proxy, certs) as client:
            client.command(b"a1 LOGIN alice@example.test alice-secret")
            assert any(b"\\Trash" in line and b"Papierkorb" in line for line in client.command(b'a2 LIST "" "*"'))
            client.command(b"a3 SELECT INBOX")
            for number, command in enumerate([
                b"STORE 1 +FLAGS (\\Deleted)", b"UID STORE 1:* +FLAGS.SILENT \\Deleted", b"EXPUNGE",
                b"UID EXPUNGE 1", b"MOVE 1 Papierkorb", b"DELETE INBOX",
            ]):
                tag = b"d%d" % number
                assert client.command(tag + b" " + command)[-1] == tag + b" NO Deletion is not permitted for this account\r\n"
            assert client.command(b"a4 STORE 1 +FLAGS (\\Seen)")[-1].startswith(b"a4 OK")
            assert b"* 2 EXISTS\r\n" in client.command(b"a5 SELECT INBOX")
        with raw_client(proxy, certs) as client:  # bob is not protected
            client.command(b"b1 LOGIN bob@example.test bob-secret")
            client.command(b"b2 SELECT INBOX")
            assert client.command(b"b3 MOVE 1 Papierkorb")[-1].startswith(b"b3 OK")
        assert proxy.metric("mailproxy_plugin_checks_total", plugin="retention", check="delete", result="refused") == 6


def audit_lines(proxy) -> list[dict]:
    marker = " mailproxy.audit: "
    return [json.loads(line.split(marker, 1)[1]) for line in proxy.log().splitlines() if marker in line]


def test_imap_audit_logs_each_mailbox_access(dovecot, make_proxy, certs):
    proxy = make_proxy(
        "127.0.0.1:9", **imap_config(dovecot, certs),
        plugins={"enabled": ["access", "imap_audit"]},
    )
    with raw_client(proxy, certs) as client:
        client.command(b"a1 LOGIN alice@example.test alice-secret")
        client.command(b"a2 EXAMINE INBOX")
        client.command(b"a3 FETCH 1:* (FLAGS)")
        client.command(b"a4 SELECT Nowhere")
        client.command(b"a5 SELECT INBOX")
        client.command(b"a6 APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE)
        client.command(b"a7 UID STORE 1 +FLAGS (\\Deleted)")
        client.command(b"a8 EXPUNGE")
        client.command(b"a9 NOOP")
        client.command(b"b1 LOGOUT")
    lines = audit_lines(proxy)
    shown = [(line["verb"], line["mailbox"], line["status"]) for line in lines]
    assert shown == [
        ("EXAMINE", "INBOX", "OK"), ("FETCH", "INBOX", "OK"), ("SELECT", "Nowhere", "NO"),
        ("SELECT", "INBOX", "OK"), ("APPEND", "INBOX", "OK"), ("UID STORE", "INBOX", "OK"),
        ("EXPUNGE", "INBOX", "OK"),
    ]
    examine, fetch, _, select, append, _, expunge = lines
    assert examine["exists"] == 1 and examine["read_only"] is True
    assert fetch["fetched"] == 1
    assert select["read_only"] is False
    assert append["size"] == len(MESSAGE)
    assert expunge["expunged"] == 1
    assert all(line["user"] == "alice@example.test" and line["client"] == "127.0.0.1" for line in lines)


def test_one_scrape_shows_the_mail_store_traffic(dovecot, make_proxy, certs):
    config = imap_config(dovecot, certs)
    config["upstreams"]["pop3store"] = {**config["upstreams"]["store"], "address": f"127.0.0.2:{dovecot.pop3_port}"}
    config["listeners"].append({**config["listeners"][0], "name": "pop3", "protocol": "pop3", "upstream": "pop3store"})
    proxy = make_proxy(
        "127.0.0.1:9", **config,
        plugins={"enabled": ["access", "retention"]}, plugin={"retention": {"accounts": ["alice@example.test"]}},
    )
    client = login(proxy, certs)
    client.select("INBOX")
    client.fetch("1", "(BODY.PEEK[])")
    assert client.expunge()[0] == "NO"  # retention
    client.logout()
    with raw_client(proxy, certs) as failed:
        failed.command(b"a1 LOGIN alice@example.test wrong")
    pop3 = poplib.POP3("127.0.0.1", proxy.port("pop3"), timeout=10)
    pop3.stls(client_context(certs[0]))
    pop3.user("alice@example.test")
    pop3.pass_("alice-secret")
    pop3.retr(1)
    pop3.quit()
    metric = proxy.metric
    assert metric("mailproxy_connections_total", protocol="imap", listener="imap") == 2
    assert metric("mailproxy_connections_total", protocol="pop3", listener="pop3") == 1
    assert metric("mailproxy_auth_attempts_total", listener="imap", mechanism="LOGIN", result="success") == 1
    assert metric("mailproxy_auth_attempts_total", listener="imap", mechanism="LOGIN", result="failure") == 1
    assert metric("mailproxy_commands_total", protocol="imap", verb="FETCH") == 1
    assert metric("mailproxy_commands_total", protocol="pop3", verb="RETR") == 1
    assert metric("mailproxy_verdicts_total", plugin="retention", hook="imap_command", action="reject", enforced="true") == 1
    assert metric("mailproxy_relayed_bytes_total", protocol="imap", direction="to_client") > len(MESSAGE)
    assert metric("mailproxy_relayed_bytes_total", protocol="imap", direction="to_upstream") > 0
    assert metric("mailproxy_relayed_bytes_total", protocol="pop3", direction="to_client") > len(MESSAGE)
    assert metric("mailproxy_replies_total", protocol="imap", **{"class": "no"}, origin="proxy") >= 2
    # Commands relayed after the login are timed from forwarding to the tagged answer.
    assert metric("mailproxy_upstream_duration_seconds_count", upstream="store", command="SELECT") == 1
    assert metric("mailproxy_upstream_duration_seconds_count", upstream="store", command="FETCH") == 1
    assert metric("mailproxy_upstream_duration_seconds_count", upstream="pop3store", command="RETR") == 1
    assert metric("mailproxy_tls_handshakes_total", protocol="pop3", listener="pop3", result="success") == 1


def test_pipe_after_login_relays_bytes_and_runs_no_command_hook(dovecot, make_proxy, certs):
    proxy = make_proxy(
        "127.0.0.1:9", **imap_config(dovecot, certs, after_login="pipe"),
        plugins={"enabled": ["access", "retention"]}, plugin={"retention": {"accounts": ["alice@example.test"]}},
    )
    with raw_client(proxy, certs) as client:
        assert client.command(b"a1 LOGIN alice@example.test alice-secret")[-1].startswith(b"a1 OK")
        # Pipelined after the login's answer: the pipe passes both on at once.
        client.send(b"a2 SELECT INBOX\r\na3 FETCH 1 (BODY.PEEK[])\r\n")
        assert client.until_tagged(b"a2")[-1].startswith(b"a2 OK")
        fetched = b"".join(client.until_tagged(b"a3"))
        assert MESSAGE in fetched
        # No hook runs in the pipe: retention would have refused this.
        assert client.command(b"a4 STORE 1 +FLAGS (\\Deleted)")[-1].startswith(b"a4 OK")
        assert client.command(b"a5 LOGOUT")[-1].startswith(b"a5 OK")
    assert proxy.metric("mailproxy_commands_total", protocol="imap", verb="STORE") == 0


# --- what the command hooks see: nothing goes upstream past them ------------------------

DROPINS = Path(__file__).parent / "dropins"


@pytest.fixture
def guarded(dovecot, make_proxy, certs):
    """The proxy with a plugin that refuses DELETE."""
    return make_proxy(
        "127.0.0.1:9", **imap_config(dovecot, certs),
        plugins={"enabled": ["access", "imap_guard"], "directories": [str(DROPINS)]},
    )


def smuggling_victim(client: ImapRaw) -> None:
    client.command(b"a1 LOGIN alice@example.test alice-secret")
    assert client.command(b"a2 CREATE Victim")[-1].startswith(b"a2 OK")
    assert client.command(b"a3 DELETE Victim")[-1].startswith(b"a3 NO DELETE refused")


def assert_not_smuggled(client: ImapRaw, answers: list[bytes]) -> None:
    """Nothing answered the smuggled command: the upstream never ran it."""
    answers = answers + client.command(b"a4 NOOP")
    assert answers[-1].startswith(b"a4 OK")
    assert not any(line.startswith(b"s1 ") for line in answers), answers
    assert any(b"Victim" in line for line in client.command(b'a5 LIST "" "Victim"'))


SMUGGLED = b"s1 DELETE Victim\r\n"


@pytest.mark.parametrize("carrier", [
    b"v1 NOOP {%d}\r\n",  # a sync literal the proxy reads itself
    b"v2 SUBSCRIBE INBOX {%d+}\r\n",  # Dovecot reads only the arguments it needs
    b"v3 SEARCH \xc3\xa9 {%d+}\r\n",  # Dovecot stops at 8-bit data in an atom
    b"v4 FETCH 1 BODY[(] {%d+}\r\n",  # Dovecot stops at an invalid atom
    b"v5 XYZZY {%d+}\r\n",  # an unknown command
])
def test_a_literal_the_upstream_never_reads_cannot_carry_a_command(guarded, certs, carrier):
    with raw_client(guarded, certs) as client:
        smuggling_victim(client)
        tag = carrier.split(b" ", 1)[0]
        if b"+}" in carrier:
            client.send(carrier % len(SMUGGLED) + SMUGGLED)
        else:
            client.send(carrier % len(SMUGGLED))
            assert client.line() == b"+ OK\r\n"
            client.send(SMUGGLED)
        client.send(b"\r\n")
        assert_not_smuggled(client, client.until_tagged(tag))


def test_a_big_literal_of_an_unknown_command_is_not_taken_for_commands(guarded, certs):
    literal = b"x" * 70_000 + b"\r\n" + SMUGGLED
    with raw_client(guarded, certs) as client:
        smuggling_victim(client)
        client.send(b"v6 XYZZY {%d+}\r\n" % len(literal) + literal + b"\r\n")
        assert_not_smuggled(client, client.until_tagged(b"v6"))


def test_a_message_ending_like_a_literal_marker_is_stored_as_sent(imap_proxy, certs):
    message = b"From: a@example.test\r\nSubject: marker\r\n\r\nthe last part {1}\r\n"
    client = login(imap_proxy, certs)
    assert client.append("INBOX", None, None, message)[0] == "OK"
    client.select("INBOX")
    assert client.fetch("2", "(BODY.PEEK[])")[1][0][1] == message
    client.logout()


def test_a_tag_still_in_use_is_refused(imap_proxy, certs):
    with raw_client(imap_proxy, certs) as client:
        client.command(b"a1 LOGIN alice@example.test alice-secret")
        client.send(b"t1 SELECT INBOX\r\nt1 APPEND INBOX {70000}\r\n")
        replies = [client.line() for _ in range(3)]
        while not any(line.startswith(b"t1 OK") for line in replies):
            replies.append(client.line())
        assert b"t1 BAD Tag already in use by an unfinished command.\r\n" in replies
        assert not any(line.startswith(b"+") for line in replies)  # the client sends no literal
        assert client.command(b"t2 NOOP")[-1].startswith(b"t2 OK")


def test_hooks_never_see_credentials_after_the_login_either(guarded, certs):
    with raw_client(guarded, certs) as client:
        client.command(b"a1 LOGIN alice@example.test alice-secret")
        assert client.command(b"a2 LOGIN bob@example.test bob-secret")[-1].startswith(b"a2 BAD")
        client.send(b"a3 LOGIN bob@example.test {10}\r\n")
        assert client.line() == b"+ OK\r\n"
        client.send(b"bob-secret\r\n")
        assert client.until_tagged(b"a3")[-1].startswith(b"a3 BAD")
    log = guarded.log()
    assert "imap_guard saw a2 LOGIN" in log and "bob-secret" not in log


def test_a_client_that_half_closes_gets_every_answer(dovecot, make_proxy, certs):
    # In plaintext: a TLS connection cannot be half-closed.
    config = imap_config(dovecot, certs)
    config["listeners"] = [{"name": "imap", "protocol": "imap", "upstream": "store", "allow_plaintext_auth": True}]
    proxy = make_proxy("127.0.0.1:9", **config)
    with ImapRaw("127.0.0.1", proxy.port("imap")) as client:
        client.line()
        client.command(b"a1 LOGIN alice@example.test alice-secret")
        client.send(b"h1 SELECT INBOX\r\nh2 FETCH 1 (FLAGS)\r\nh3 LOGOUT\r\n")
        client.sock.shutdown(socket.SHUT_WR)
        rest = client.until_closed()
    assert b"h1 OK" in rest and b"h2 OK" in rest and b"h3 OK" in rest


def test_clients_leaving_without_logout_are_no_upstream_failure(imap_proxy, dovecot, certs):
    for leave_in_idle in (False, True):
        with raw_client(imap_proxy, certs) as client:
            client.command(b"a1 LOGIN alice@example.test alice-secret")
            client.command(b"a2 SELECT INBOX")
            if leave_in_idle:
                client.send(b"a3 IDLE\r\n")
                assert client.line().startswith(b"+ ")
    # The proxy logged both sessions out of the upstream after their clients left (the
    # one in IDLE after ending it). Dovecot names them by the session id the proxy's ID
    # gave (10 hex digits; its own are base64).
    logged_out = r"imap\(alice@example\.test\)<\d+><[0-9a-f]{10}>: Info: Disconnected: Logged out in="
    dovecot.wait_for_log(re.compile(f"(?s){logged_out}.*{logged_out}"))
    # ... and counted nothing of it as an upstream failure.
    assert imap_proxy.metric("mailproxy_upstream_failures_total") == 0


def test_upstream_chatter_does_not_keep_an_idle_client_alive(dovecot, make_proxy, certs):
    proxy = make_proxy("127.0.0.1:9", **imap_config(dovecot, certs, idle_timeout=3.0))
    with raw_client(proxy, certs) as client:
        client.command(b"a1 LOGIN alice@example.test alice-secret")
        client.command(b"a2 SELECT INBOX")
        client.send(b"a3 IDLE\r\n")
        assert client.line().startswith(b"+ ")
        for _ in range(6):  # new mail every 0.8 s: EXISTS lines, none of them the client's doing
            dovecot.seed("alice@example.test", [MESSAGE])
            time.sleep(0.8)
        chatter_ended = time.monotonic()
        rest = client.until_closed()
    # Closed 3 s after the client's last word, while the mail still came in: not 3 s
    # after the upstream's last word.
    assert b"* BYE Disconnected for inactivity." in rest
    assert time.monotonic() - chatter_ended < 1.5


def test_a_literal_login_before_tls_is_refused_before_the_password_is_sent(imap_proxy):
    with ImapRaw("127.0.0.1", imap_proxy.port("imap")) as client:
        client.line()
        client.send(b"a1 LOGIN {18}\r\n")
        assert client.line().startswith(b"a1 NO [PRIVACYREQUIRED]")  # no "+": the client sends nothing more


def test_the_upstreams_bye_reaches_the_client(dovecot, imap_proxy, certs):
    with raw_client(imap_proxy, certs) as client:
        client.command(b"a1 LOGIN alice@example.test alice-secret")
        client.command(b"a2 SELECT INBOX")
        dovecot.stop()  # Dovecot says BYE to its sessions on the way down
        rest = client.until_closed()
    assert rest == b"* BYE Server shutting down.\r\n"  # Dovecot's own, and nothing of the proxy's


def test_parallel_logins_from_one_address_are_not_held_back(dovecot, make_proxy, certs):
    # An IMAP client opens several connections at once: its own logins in flight must
    # not delay one another (they still count against max_failures meanwhile).
    proxy = make_proxy("127.0.0.1:9", auth={"throttle_delay": 2.0, "max_failures": 5}, **imap_config(dovecot, certs))

    def log_in_and_out() -> str:
        client = login(proxy, certs)
        return client.logout()[0]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: log_in_and_out(), range(4))) == ["BYE"] * 4
    # No login waited for another: not one throttle pause (2 s each) was taken. Counted,
    # not timed, so that a loaded machine cannot make it pass or fail.
    assert proxy.metric("mailproxy_auth_delay_seconds_count") == 0
    assert proxy.metric("mailproxy_auth_attempts_total", result="success") == 4


def test_imap_logins_are_throttled_like_every_other(imap_proxy, certs):
    # max_failures is 3 in the tests' configuration.
    with raw_client(imap_proxy, certs) as client:
        for tag in (b"a1", b"a2", b"a3"):
            assert client.command(tag + b" LOGIN alice@example.test wrong")[-1].startswith(tag + b" NO [AUTHENTICATIONFAILED]")
        reply = client.command(b"a4 LOGIN alice@example.test alice-secret")[-1]
    assert reply.startswith(b"a4 NO [UNAVAILABLE] Too many authentication failures")
    assert imap_proxy.metric("mailproxy_auth_attempts_total", listener="imap", mechanism="LOGIN", result="throttled") == 1
