"""The Dovecot harness itself: submission relaying to smtp-sink, IMAP, POP3, XCLIENT, the
PROXY header listeners, seeding mailboxes, and the raw POP3/IMAP clients against it."""

import base64
import imaplib
import poplib
import re
import smtplib
import socket

import pytest

from tests.support.dovecot import Dovecot
from tests.support.mailstore_clients import ImapRaw, Pop3Raw, mutf7, proxy_v2_header
from tests.support.tls import client_context

pytestmark = pytest.mark.integration

USERS = {"alice@example.test": "alice-pw"}
MESSAGE = b"Subject: via dovecot\r\nFrom: alice@example.test\r\n\r\nhello\r\n"


@pytest.fixture
def dovecot(sink, certs):
    _, cert, key = certs
    with Dovecot(USERS, submission_relay=sink.address, tls=(cert, key)) as server:
        yield server


@pytest.fixture
def tls_context(certs):
    return client_context(certs[0])


def test_submission_starttls_login_relays_to_the_sink(dovecot, sink, tls_context):
    with smtplib.SMTP("127.0.0.1", dovecot.submission_port, timeout=10) as client:
        client.starttls(context=tls_context)
        client.login("alice@example.test", "alice-pw")
        client.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)
    [body] = sink.bodies(expected=1)
    # Dovecot prepends its own Received header; the message follows unchanged.
    assert body.startswith(b"Received: from ")
    assert body.endswith(MESSAGE.replace(b"\r\n", b"\n"))


def test_submissions_port_speaks_implicit_tls(dovecot, sink, tls_context):
    with smtplib.SMTP_SSL("127.0.0.1", dovecot.submissions_port, timeout=10,
                          context=tls_context) as client:
        client.login("alice@example.test", "alice-pw")
        client.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)
    assert len(sink.bodies(expected=1)) == 1


def test_submission_bad_password_is_535(dovecot, tls_context):
    with smtplib.SMTP("127.0.0.1", dovecot.submission_port, timeout=10) as client:
        client.starttls(context=tls_context)
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login("alice@example.test", "wrong")
    assert (failed.value.smtp_code, failed.value.smtp_error) == (535, b"5.7.8 Authentication failed.")


def test_submission_without_auth_is_530(dovecot, sink, tls_context):
    with smtplib.SMTP("127.0.0.1", dovecot.submission_port, timeout=10) as client:
        client.starttls(context=tls_context)
        client.ehlo()
        assert client.mail("alice@example.test") == (530, b"5.7.0 Authentication required.")
    assert sink.messages() == []


def test_no_plaintext_auth_before_starttls_from_an_untrusted_address(dovecot):
    with smtplib.SMTP("127.0.0.1", dovecot.submission_port, timeout=10,
                      source_address=("127.0.0.3", 0)) as client:
        client.ehlo()
        assert client.esmtp_features["auth"].strip() == ""  # "250-AUTH " with no mechanisms
        assert "xclient" not in client.esmtp_features
        credentials = base64.b64encode(b"\0alice@example.test\0alice-pw").decode()
        code, reply = client.docmd("AUTH", f"PLAIN {credentials}")
        assert (code, reply) == (523, b"5.7.10 Plaintext authentication disabled.")


def test_xclient_from_a_trusted_network_sets_the_client_address(dovecot, sink):
    with smtplib.SMTP("127.0.0.1", dovecot.submission_port, timeout=10) as client:
        client.ehlo("proxy.test")
        assert client.esmtp_features["xclient"] == "ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT FORWARD"
        code, reply = client.docmd("XCLIENT", "ADDR=192.0.2.7 LOGIN=alice@example.test")
        assert code == 220  # a new greeting, as Postfix does
        client.ehlo("real-client.test")
        # LOGIN= does not authenticate the session.
        assert client.mail("alice@example.test")[0] == 530
        # No STARTTLS needed: a client from the trusted networks counts as secured.
        client.login("alice@example.test", "alice-pw")
        client.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)
    [body] = sink.bodies(expected=1)
    assert body.startswith(b"Received: from real-client.test ([192.0.2.7])\n\tby dovecot.test with ESMTPA\n")
    assert dovecot.wait_for_log("rip=192.0.2.7")


def test_imap_login(dovecot, tls_context):
    with imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10) as client:
        client.starttls(tls_context)
        assert client.login("alice@example.test", "alice-pw")[0] == "OK"
        assert client.select("INBOX") == ("OK", [b"0"])
        client.logout()


def test_pop3_login(dovecot, tls_context):
    client = poplib.POP3("127.0.0.1", dovecot.pop3_port, timeout=10)
    try:
        client.stls(tls_context)
        client.user("alice@example.test")
        assert client.pass_("alice-pw").startswith(b"+OK")
        assert client.stat() == (0, 0)
        client.quit()
    finally:
        client.close()


@pytest.mark.parametrize("trusted_networks, allowed", [("", False), ("127.0.0.1/32", True)])
def test_plaintext_login_without_tls_only_from_trusted_networks(trusted_networks, allowed):
    # On 127.0.0.2, so that a client from 127.0.0.1 is not at Dovecot's own address,
    # which would count as secured whatever the trusted networks.
    with Dovecot(USERS, listen="127.0.0.2", trusted_networks=trusted_networks) as server:
        assert (server.submission_port, server.submissions_port) == (None, None)
        with imaplib.IMAP4("127.0.0.2", server.imap_port, timeout=10) as client:
            assert "STARTTLS" not in client.capabilities
            if allowed:
                assert client.login("alice@example.test", "alice-pw")[0] == "OK"
            else:
                assert "LOGINDISABLED" in client.capabilities
                with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
                    client.login("alice@example.test", "alice-pw")
            client.logout()
        directory = server.dir
    assert not directory.exists()
    assert server.process.poll() is not None


def test_a_failing_dovecot_raises_with_its_log():
    server = Dovecot(USERS, tls=("/nonexistent/cert.pem", "/nonexistent/key.pem"))
    with pytest.raises(RuntimeError, match="Can't open file /nonexistent/cert.pem"):
        server.start()
    assert server.dir is None  # the temp dir is gone too


# POP3 and IMAP behind a proxy. Dovecot listens on STORE and trusts PROXY_SOURCE, the
# address a proxy would connect from; test clients come from 127.0.0.1, untrusted.
STORE = "127.0.0.2"
PROXY_SOURCE = "127.0.0.5"
ALICE = "alice@example.test"
LOGIN = b"LOGIN alice@example.test alice-pw"


@pytest.fixture
def store():
    with Dovecot(USERS, listen=STORE, trusted_networks=f"{PROXY_SOURCE}/32", haproxy=True,
                 special_use=True, mailboxes=("Entwürfe",), imap_compress=True) as server:
        yield server


def login_line(ip: str) -> re.Pattern:
    return re.compile(rf"Login: user=<{re.escape(ALICE)}>, method=PLAIN, rip={re.escape(ip)}, .*")


def test_seeded_messages_come_back_from_pop3_retr_byte_for_byte(store):
    messages = [MESSAGE, b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n"]
    store.seed(ALICE, messages)
    with Pop3Raw(STORE, store.pop3_port, source=PROXY_SOURCE) as pop3:
        assert pop3.line().startswith(b"+OK")
        assert pop3.command(b"USER " + ALICE.encode()) == b"+OK\r\n"
        assert pop3.command(b"PASS alice-pw") == b"+OK Logged in.\r\n"
        assert pop3.command(b"STAT") == b"+OK 2 %d\r\n" % sum(map(len, messages))
        for number, message in enumerate(messages, start=1):
            assert pop3.command(b"RETR %d" % number) == b"+OK %d octets\r\n" % len(message)
            assert pop3.multiline() == message.replace(b"\r\n.", b"\r\n..")  # dot-stuffed
        assert pop3.command(b"QUIT").startswith(b"+OK")


def test_seed_into_another_mailbox_and_the_harness_connects_from_dovecots_own_address(store):
    store.seed(ALICE, [MESSAGE], mailbox="Entwürfe")
    with ImapRaw(STORE, store.imap_port, source=PROXY_SOURCE) as imap:
        imap.line()
        assert imap.command(b"a1 " + LOGIN)[-1].startswith(b"a1 OK")
        assert b"* 1 EXISTS\r\n" in imap.command(b'a2 EXAMINE "Entw&APw-rfe"')
        [fetched, done] = imap.command(b"a3 FETCH 1 BODY.PEEK[]")
        assert fetched == b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(MESSAGE), MESSAGE)
    assert store.wait_for_log(login_line(STORE))
    # Start-up probes and seed leave no rip=127.0.0.1 for a test to mistake for its own.
    assert "rip=127.0.0.1," not in store.log()


def test_seed_into_a_missing_mailbox_raises(store):
    with pytest.raises(AssertionError, match=r"NO \[TRYCREATE\]"):
        store.seed(ALICE, [MESSAGE], mailbox="Archive")


def test_wait_for_log_returns_the_line_or_the_match():
    with Dovecot(USERS) as server:
        assert server.wait_for_log("starting up for").endswith("starting up for imap, pop3 (core dumps disabled)")
        assert server.wait_for_log(re.compile(r"Dovecot v(\S+)")).group(1).startswith("2.3.")
        with pytest.raises(TimeoutError, match="'no such line' not in Dovecot's log within 0.1 s"):
            server.wait_for_log("no such line", timeout=0.1)


def test_pop3_xclient_from_the_trusted_networks_sets_rip(store):
    with Pop3Raw(STORE, store.pop3_port, source=PROXY_SOURCE) as pop3:
        assert pop3.line() == b"+OK [XCLIENT] Dovecot (Debian) ready.\r\n"
        assert pop3.command(b"XCLIENT ADDR=192.0.2.9 PORT=4711 SESSION=mp-7") == b"+OK Updated\r\n"
        pop3.command(b"USER " + ALICE.encode())
        assert pop3.command(b"PASS alice-pw") == b"+OK Logged in.\r\n"
        pop3.command(b"QUIT")
    assert "session=<mp-7>" in store.wait_for_log(login_line("192.0.2.9")).group()


def test_pop3_xclient_from_elsewhere_is_ignored_with_an_ok(store):
    with Pop3Raw(STORE, store.pop3_port) as pop3:
        assert pop3.line() == b"+OK Dovecot (Debian) ready.\r\n"
        assert pop3.command(b"XCLIENT ADDR=192.0.2.9") == b"+OK You are not from trusted IP - ignoring\r\n"
        assert pop3.command(b"CAPA") == b"+OK\r\n"
        assert b"XCLIENT" not in pop3.multiline()
    # When the session ends Dovecot logs it under its own address, not XCLIENT's.
    assert "pop3-login: Info: Disconnected" in store.wait_for_log("rip=127.0.0.1, lip=127.0.0.2")
    assert "rip=192.0.2.9" not in store.log()


def test_imap_id_from_the_trusted_networks_sets_rip(store):
    with ImapRaw(STORE, store.imap_port, source=PROXY_SOURCE) as imap:
        imap.line()
        imap.command(b'a1 ID ("x-originating-ip" "192.0.2.10" "x-session-ext-id" "mp-8")')
        assert imap.command(b"a2 " + LOGIN)[-1].startswith(b"a2 OK")
    assert "session=<mp-8>" in store.wait_for_log(login_line("192.0.2.10")).group()


def test_imap_idle_sees_a_message_another_session_appends(store):
    with ImapRaw(STORE, store.imap_port, source=PROXY_SOURCE) as imap:
        imap.line()
        imap.command(b"a1 " + LOGIN)
        assert b"* 0 EXISTS\r\n" in imap.command(b"a2 SELECT INBOX")
        imap.send(b"a3 IDLE\r\n")
        assert imap.line() == b"+ idling\r\n"
        store.seed(ALICE, [MESSAGE])
        assert imap.line() == b"* 1 EXISTS\r\n"
        imap.send(b"DONE\r\n")
        assert imap.until_tagged(b"a3")[-1].startswith(b"a3 OK Idle completed")


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_haproxy_listener_takes_rip_from_a_proxy_v2_header(store, protocol):
    port = getattr(store, f"{protocol}_haproxy_port")
    header = proxy_v2_header(("198.51.100.7", 40001), (STORE, port), ssl=True)
    if protocol == "imap":
        with ImapRaw(STORE, port, source=PROXY_SOURCE) as imap:
            imap.send(header)
            assert imap.line().startswith(b"* OK [CAPABILITY ")
            assert imap.command(b"a1 " + LOGIN)[-1].startswith(b"a1 OK")
    else:
        with Pop3Raw(STORE, port, source=PROXY_SOURCE) as pop3:
            pop3.send(header)
            assert pop3.line() == b"+OK Dovecot (Debian) ready.\r\n"
            pop3.command(b"USER " + ALICE.encode())
            assert pop3.command(b"PASS alice-pw") == b"+OK Logged in.\r\n"
    assert ", secured, " in store.wait_for_log(login_line("198.51.100.7")).group()


def test_haproxy_header_without_the_ssl_tlv_is_not_secured(store):
    with ImapRaw(STORE, store.imap_haproxy_port, source=PROXY_SOURCE) as imap:
        imap.send(proxy_v2_header(("198.51.100.8", 40002), (STORE, store.imap_haproxy_port), ssl=False))
        assert b" LOGINDISABLED]" in imap.line()
        assert imap.command(b"a1 " + LOGIN)[-1].startswith(b"a1 NO [PRIVACYREQUIRED]")
    assert store.wait_for_log("Login failed: Plaintext authentication disabled: user=<>, rip=198.51.100.8,")


def test_haproxy_header_from_an_untrusted_address_is_refused(store):
    with ImapRaw(STORE, store.imap_haproxy_port) as imap:
        imap.send(proxy_v2_header(("198.51.100.9", 40003), (STORE, store.imap_haproxy_port), ssl=True))
        assert imap.until_closed() == b""
    assert store.wait_for_log("haproxy: Client not trusted (rip=127.0.0.1)")


def test_special_use_trash_and_a_utf8_mailbox_in_list(store):
    with ImapRaw(STORE, store.imap_port, source=PROXY_SOURCE) as imap:
        imap.line()
        imap.command(b"a1 " + LOGIN)
        assert sorted(imap.command(b'a2 LIST "" "*"')[:-1]) == [
            b'* LIST (\\HasNoChildren \\Trash) "." Trash\r\n',
            b'* LIST (\\HasNoChildren) "." Entw&APw-rfe\r\n',
            b'* LIST (\\HasNoChildren) "." INBOX\r\n',
        ]


def test_special_use_under_another_name_and_no_namespace_by_default():
    with Dovecot(USERS, mailboxes={"Papierkorb": r"\Trash"}) as renamed, Dovecot(USERS) as plain:
        for server, expected in [(renamed, [b'* LIST (\\HasNoChildren \\Trash) "." Papierkorb\r\n',
                                            b'* LIST (\\HasNoChildren) "." INBOX\r\n']),
                                 (plain, [b'* LIST (\\HasNoChildren) "." INBOX\r\n'])]:
            with ImapRaw("127.0.0.1", server.imap_port) as imap:
                imap.line()
                imap.command(b"a1 " + LOGIN)
                assert sorted(imap.command(b'a2 LIST "" "*"')[:-1]) == expected


def test_a_mailbox_name_the_config_cannot_quote_is_refused():
    with pytest.raises(ValueError, match="mailbox name 'a\"b'"):
        Dovecot(USERS, mailboxes=('a"b',))


def test_imap_compress_offers_and_starts_deflate(store):
    with ImapRaw(STORE, store.imap_port, source=PROXY_SOURCE) as imap:
        imap.line()
        assert b" COMPRESS=DEFLATE]" in imap.command(b"a1 " + LOGIN)[-1]
        assert imap.command(b"a2 COMPRESS DEFLATE")[-1].startswith(b"a2 OK Begin compression")
    with Dovecot(USERS) as plain, ImapRaw("127.0.0.1", plain.imap_port) as imap:
        imap.line()
        assert b"COMPRESS" not in imap.command(b"a1 " + LOGIN)[-1]


def test_instances_on_two_loopback_addresses_run_side_by_side():
    bob = {"bob@example.test": "bob-pw"}
    with Dovecot(USERS, listen="127.0.0.2") as first, Dovecot(bob, listen="127.0.0.3") as second:
        first.seed(ALICE, [MESSAGE])
        second.seed("bob@example.test", [MESSAGE, MESSAGE])
        for server, user, password, count in [(first, ALICE, "alice-pw", 1),
                                              (second, "bob@example.test", "bob-pw", 2)]:
            client = poplib.POP3(server.listen, server.pop3_port, timeout=10)
            try:
                client.user(user)
                client.pass_(password)
                assert client.stat() == (count, count * len(MESSAGE))
                client.quit()
            finally:
                client.close()
        client = poplib.POP3("127.0.0.3", second.pop3_port, timeout=10)
        try:
            client.user(ALICE)
            with pytest.raises(poplib.error_proto, match="Authentication failed"):
                client.pass_("alice-pw")
        finally:
            client.close()


def test_raw_clients_starttls_then_plaintext_login(certs):
    # On 127.0.0.2 with nothing trusted: plaintext logins only after TLS. The test
    # certificate names localhost, not 127.0.0.2.
    _, cert, key = certs
    context = client_context(certs[0])
    with Dovecot(USERS, listen=STORE, tls=(cert, key), trusted_networks="") as server:
        with Pop3Raw(STORE, server.pop3_port, server_hostname="localhost") as pop3:
            pop3.line()
            assert pop3.command(b"USER " + ALICE.encode()).startswith(b"-ERR [AUTH] Plaintext")
            pop3.starttls(context)
            assert pop3.command(b"USER " + ALICE.encode()) == b"+OK\r\n"
            assert pop3.command(b"PASS alice-pw") == b"+OK Logged in.\r\n"
        with ImapRaw(STORE, server.imap_port, server_hostname="localhost") as imap:
            assert b" LOGINDISABLED]" in imap.line()
            imap.starttls(context)
            assert imap.command(b"a1 " + LOGIN)[-1].startswith(b"a1 OK")


def test_imap_raw_reads_a_fetched_literal_whole(store):
    # A line inside a literal that looks like the tagged reply is message text.
    tricky = b"Subject: tricky\r\n\r\na3 OK not the end {3}\r\n"
    store.seed(ALICE, [tricky])
    with ImapRaw(STORE, store.imap_port, source=PROXY_SOURCE) as imap:
        imap.line()
        imap.command(b"a1 " + LOGIN)
        imap.command(b"a2 SELECT INBOX")
        [fetched, done] = imap.command(b"a3 FETCH 1 BODY.PEEK[]")
        assert fetched == b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(tricky), tricky)
        assert done.startswith(b"a3 OK Fetch completed (")


def test_imap_raw_reads_literals_only_where_a_response_has_them():
    # Dovecot puts its timing after every tagged reply's text once logged in, so it is
    # never seen to end one with "{5}"; other servers (and a proxy's own replies) may.
    # A client that waited for 5 bytes there would hang; one that looked for "{N}" at
    # the end of a literal's contents would read past the response.
    wire = (b"* OK [ALERT] text that ends like a literal {5}\r\n"
            b"a1 NO Mailbox doesn't exist: x {5}\r\n"
            b"* 1 FETCH (BODY[] {12}\r\na1 OK fake\r\n UID 7)\r\n"
            b'* LIST () "." {3}\r\n{2}\r\n'
            b"a2 OK done\r\n")
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            ImapRaw("127.0.0.1", listener.getsockname()[1], timeout=2) as imap:
        server, _ = listener.accept()
        with server:
            server.sendall(wire)
            assert imap.until_tagged(b"a1") == [b"* OK [ALERT] text that ends like a literal {5}\r\n",
                                                b"a1 NO Mailbox doesn't exist: x {5}\r\n"]
            assert imap.until_tagged(b"a2") == [b"* 1 FETCH (BODY[] {12}\r\na1 OK fake\r\n UID 7)\r\n",
                                                b'* LIST () "." {3}\r\n{2}\r\n',
                                                b"a2 OK done\r\n"]


def test_raw_clients_time_out_instead_of_hanging(store):
    # The haproxy listener says nothing until it has a header.
    with ImapRaw(STORE, store.imap_haproxy_port, source=PROXY_SOURCE, timeout=0.3) as imap:
        with pytest.raises(TimeoutError):
            imap.line()


def test_proxy_v2_header_bytes():
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    assert proxy_v2_header(("192.0.2.1", 1234), ("127.0.0.2", 143), ssl=False) == (
        signature + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 1, 127, 0, 0, 2]) + b"\x04\xd2\x00\x8f")
    assert proxy_v2_header(("2001:db8::1", 1), ("::1", 2), ssl=True) == (
        signature + b"\x21\x21\x00\x2c" + bytes.fromhex("20010db8" + "00" * 11 + "01") + bytes(15) + b"\x01"
        + b"\x00\x01\x00\x02" + b"\x20\x00\x05" + b"\x01\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="not of one address family"):
        proxy_v2_header(("192.0.2.1", 1), ("::1", 2), ssl=False)


@pytest.mark.parametrize("name, encoded", [
    ("INBOX", b"INBOX"), ("Entwürfe", b"Entw&APw-rfe"), ("a&b", b"a&-b"),
    ("~peter/mail/台北/日本語", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
])
def test_mutf7(name, encoded):
    assert mutf7(name) == encoded
