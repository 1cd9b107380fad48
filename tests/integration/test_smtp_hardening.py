"""SMTP under hostile clients and failing upstreams: admission limits, deadlines, the
error budget, STARTTLS forgetting the login, the upstream's DATA replies, keepalive and
replay, ESMTP parameters, and what the upstream is told about the client."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import time

import pytest

from tests.support.clients import auth_plain, connect, start_transaction
from tests.support.recorder import RecordingUpstream
from tests.support.tls import client_context

pytestmark = pytest.mark.integration

MX = {"name": "mx", "mode": "mx", "upstream": "sink", "local_domains": ["example.test"]}
MESSAGE = b"Subject: t\r\n\r\nhello\r\n"


def mx(**settings) -> list[dict]:
    return [{**MX, **settings}]


def upstream(recorder: RecordingUpstream, **settings) -> dict:
    return {"sink": {"address": recorder.address, "connect_timeout": 3.0, "reply_timeout": 5.0, **settings}}


def read_reply(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """One complete (possibly multi-line) reply from a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and any(len(l) >= 4 and l[3:4] == b" " for l in lines[:-1]):
            return data


def trickle(sock: socket.socket, data: bytes, interval: float = 0.5) -> bytes:
    """Send `data` a byte every `interval` seconds (never idle for long) until the
    proxy says something; return what it said."""
    sock.settimeout(interval)
    reply = b""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
            reply += sock.recv(4096)
        except socket.timeout:
            continue
        except OSError:
            break
        if reply:
            break
    return reply


def open_transaction(proxy) -> smtplib.SMTP:
    client = connect(proxy)
    start_transaction(client)
    return client


# --- admission ---------------------------------------------------------------------------


def test_connections_over_the_per_client_limit_get_421_and_no_upstream_session(make_proxy):
    with RecordingUpstream() as recorder:
        proxy = make_proxy(recorder.address, listeners=mx(max_connections_per_client=3))
        admitted = [connect(proxy) for _ in range(3)]
        for client in admitted:
            assert client.noop()[0] == 250
        refused = smtplib.SMTP(timeout=10)
        assert refused.connect("127.0.0.1", proxy.port("mx")) == (
            421, b"4.7.0 proxy.test Too many connections from your address, try again later"
        )
        refused.close()
        # Another address is not affected by this one's sessions.
        with smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=10, source_address=("127.0.0.2", 0)) as other:
            assert other.noop()[0] == 250
        assert len(recorder.sessions) == 4  # three admitted, one from 127.0.0.2
        # A slot frees when a session ends.
        admitted.pop().quit()
        time.sleep(0.2)
        with connect(proxy) as again:
            assert again.noop()[0] == 250
        for client in admitted:
            client.quit()
    assert proxy.metric("mailproxy_connections_refused_total", reason="per_client") == 1


def test_listener_total_limit(make_proxy):
    with RecordingUpstream() as recorder:
        proxy = make_proxy(recorder.address, listeners=mx(max_connections=2))
        first = connect(proxy)
        second = smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=10, source_address=("127.0.0.3", 0))
        third = smtplib.SMTP(timeout=10)
        code, text = third.connect("127.0.0.1", proxy.port("mx"), source_address=("127.0.0.4", 0))
        assert (code, text) == (421, b"4.7.0 proxy.test Too many connections, try again later")
        third.close()
        first.quit()
        second.quit()
        assert len(recorder.sessions) == 2
    assert proxy.metric("mailproxy_connections_refused_total", reason="total") == 1


# --- slow clients ------------------------------------------------------------------------


def test_a_command_line_trickling_in_runs_into_its_deadline(make_proxy):
    with RecordingUpstream() as recorder:
        proxy = make_proxy(recorder.address, listeners=mx(idle_timeout=1.5, command_timeout=2.0))
        sock = socket.create_connection(("127.0.0.1", proxy.port("mx")), timeout=10)
        assert read_reply(sock).startswith(b"220 ")
        started = time.monotonic()
        reply = trickle(sock, b"EHLO a-very-slow-client.example")  # would take 15 s
        assert reply == b"421 4.4.2 proxy.test Timeout exceeded, closing connection\r\n"
        assert time.monotonic() - started < 10  # the line would have taken 15 s
        sock.close()


def test_data_slower_than_the_minimum_rate_is_cut_off_and_not_delivered(make_proxy):
    with RecordingUpstream() as recorder:
        proxy = make_proxy(
            recorder.address, listeners=mx(idle_timeout=1.5, command_timeout=1.0, min_data_rate=10)
        )
        client = open_transaction(proxy)
        assert client.docmd("DATA")[0] == 354
        started = time.monotonic()
        reply = trickle(client.sock, b"x" * 40)  # 2 bytes/s, under 10 bytes/s
        assert reply == b"421 4.4.2 proxy.test Timeout exceeded, closing connection\r\n"
        assert time.monotonic() - started < 15
        client.close()
        recorder.wait_ended(1)
        assert recorder.messages == []


def test_data_at_the_minimum_rate_goes_through(make_proxy):
    with RecordingUpstream() as recorder:
        proxy = make_proxy(
            recorder.address, listeners=mx(idle_timeout=5, command_timeout=1.0, min_data_rate=1000)
        )
        client = open_transaction(proxy)
        assert client.docmd("DATA")[0] == 354
        body = b"Subject: paced\r\n\r\n" + b"y" * 2000 + b"\r\n"
        for offset in range(0, len(body), 500):  # 500 bytes every 0.1 s: ~5000 bytes/s
            client.sock.sendall(body[offset:offset + 500])
            time.sleep(0.1)
        client.sock.sendall(b".\r\n")
        assert client.getreply()[0] == 250
        client.quit()


# --- the error budget --------------------------------------------------------------------


def test_refused_recipients_end_the_session_at_the_hard_limit(make_proxy):
    with RecordingUpstream() as recorder:
        proxy = make_proxy(recorder.address, listeners=mx(max_errors=20, soft_error_limit=20))
        client = connect(proxy)
        client.ehlo("client.test")
        assert client.mail("a@sender.example")[0] == 250
        # Pipelined like a dictionary attack: 1000 relay attempts in one write.
        client.sock.sendall(b"".join(b"RCPT TO:<u%d@elsewhere.example>\r\n" % i for i in range(1000)))
        replies = []
        while True:
            code, text = client.getreply()
            replies.append(code)
            if code == 421:
                break
        assert replies == [554] * 20 + [421]
        assert text == b"4.7.0 proxy.test Error: too many errors, closing connection"
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


def test_cancelled_auth_exchanges_count_as_errors(make_proxy):
    with RecordingUpstream() as recorder:
        proxy = make_proxy(recorder.address, listeners=[{
            "name": "submission", "mode": "submission", "upstream": "sink",
            "allow_plaintext_auth": True, "max_errors": 5, "soft_error_limit": 5,
        }])
        client = connect(proxy, "submission")
        client.ehlo("client.test")
        codes = []
        for _ in range(50):
            code, _ = client.docmd("AUTH", "LOGIN")
            if code == 421:
                codes.append(code)
                break
            assert code == 334
            codes.append(client.docmd("*")[0])
        assert codes == [501] * 5 + [421]


def test_soft_error_limit_slows_replies(make_proxy):
    with RecordingUpstream() as recorder:
        proxy = make_proxy(
            recorder.address, listeners=mx(soft_error_limit=2, error_sleep=1.0, max_errors=10)
        )
        with connect(proxy) as client:
            first = time.monotonic()
            assert client.docmd("BOGUS")[0] == 502  # error 1
            fast = time.monotonic() - first
            second = time.monotonic()
            assert client.docmd("BOGUS")[0] == 502  # error 2: at the soft limit
            slow = time.monotonic() - second
        assert slow >= 0.9  # it can only be slower than the sleep, never faster
        assert fast < slow


# --- STARTTLS forgets what was said before it ---------------------------------------------


def test_login_before_starttls_is_forgotten(make_proxy, certs):
    with RecordingUpstream(xclient=True) as recorder:
        proxy = make_proxy(recorder.address, listeners=[{
            "name": "submission", "mode": "submission", "upstream": "sink", "tls": "starttls",
            "cert_file": str(certs[1]), "key_file": str(certs[2]), "allow_plaintext_auth": True,
        }])
        client = connect(proxy, "submission")
        client.ehlo("client.test")
        assert auth_plain(client, "alice@example.test", "alice-secret")[0] == 235
        client.starttls(context=client_context(certs[0]))
        # The upstream session that was told the login (XCLIENT LOGIN) is closed at once,
        # while the client is still connected, not kept for the next command.
        recorder.wait_ended(1)
        client.ehlo("client.test")
        assert client.mail("alice@example.test") == (530, b"5.7.0 Authentication required")
        assert auth_plain(client, "alice@example.test", "alice-secret")[0] == 235
        assert client.mail("alice@example.test")[0] == 250
        client.quit()


# --- what the upstream answers to DATA and to the end of it ------------------------------


def test_a_slow_final_reply_has_its_own_longer_timeout(make_proxy):
    with RecordingUpstream(delay_after_data=2.0) as recorder:
        proxy = make_proxy(recorder.address, upstreams=upstream(recorder, reply_timeout=1.0, data_timeout=10.0))
        client = open_transaction(proxy)
        assert client.data(MESSAGE) == (250, b"queued")
        client.quit()
    assert proxy.metric("mailproxy_messages_total", outcome="delivered") == 1


def test_no_final_reply_is_counted_as_an_unknown_outcome(make_proxy):
    with RecordingUpstream(silent_after_data=True) as recorder:
        proxy = make_proxy(recorder.address, upstreams=upstream(recorder, data_timeout=1.0))
        client = open_transaction(proxy)
        assert client.data(MESSAGE)[0] == 451
        client.quit()
    assert proxy.metric("mailproxy_messages_total", outcome="unknown") == 1
    assert "outcome unknown" in proxy.log()


def test_a_3xx_to_the_end_of_a_message_is_no_answer(make_proxy):
    with RecordingUpstream(final_reply=b"354 more please") as recorder:
        proxy = make_proxy(recorder.address)
        client = open_transaction(proxy)
        assert client.data(MESSAGE) == (451, b"4.3.0 Upstream failure, message not accepted, try again later")
        client.quit()
    assert proxy.metric("mailproxy_messages_total", outcome="unknown") == 1


# --- keepalive and replay ------------------------------------------------------------------


def test_keepalive_noops_keep_the_upstream_while_the_client_pauses(make_proxy):
    with RecordingUpstream(idle_close=1.0) as recorder:
        proxy = make_proxy(recorder.address, upstreams=upstream(recorder, keepalive=0.3), listener={"data_mode": "whole"})
        client = open_transaction(proxy)
        assert client.docmd("DATA")[0] == 354
        client.sock.sendall(b"Subject: paused\r\n\r\n")
        time.sleep(2.5)  # the upstream would hang up after 1 s of silence
        client.sock.sendall(b"after the pause\r\n.\r\n")
        assert client.getreply() == (250, b"queued")
        client.quit()
        assert len(recorder.sessions) == 1
        assert b"NOOP" in recorder.sessions[0].commands


def test_a_lost_upstream_session_is_reopened_and_the_envelope_replayed(make_proxy):
    with RecordingUpstream(idle_close=1.0) as recorder:
        proxy = make_proxy(recorder.address, upstreams=upstream(recorder, keepalive=60.0))
        client = open_transaction(proxy)
        time.sleep(1.5)  # the upstream hangs up on us between RCPT and DATA
        recorder.wait_ended(1)
        assert client.data(MESSAGE) == (250, b"queued")
        client.quit()
        assert len(recorder.sessions) == 2
        replayed = recorder.sessions[1].commands
        assert replayed[0].startswith(b"EHLO client.test")
        assert b"MAIL FROM:<a@sender.example>" in replayed
        assert b"RCPT TO:<user@example.test>" in replayed
        assert recorder.sessions[1].messages == [b"Subject: t\r\n\r\nhello"]


def test_a_lost_upstream_session_between_mail_and_rcpt(make_proxy):
    with RecordingUpstream(idle_close=1.0) as recorder:
        proxy = make_proxy(recorder.address)
        client = connect(proxy)
        client.ehlo("client.test")
        assert client.mail("a@sender.example")[0] == 250
        recorder.wait_ended(1)
        assert client.rcpt("user@example.test")[0] == 250  # not a 503 from a fresh upstream
        assert client.data(MESSAGE)[0] == 250
        client.quit()
        assert recorder.sessions[1].commands[1:3] == [b"MAIL FROM:<a@sender.example>", b"RCPT TO:<user@example.test>"]


# --- ESMTP parameters ----------------------------------------------------------------------


@pytest.mark.parametrize("extensions, sent, forwarded", [
    # No SIZE offered upstream: the proxy keeps SIZE to itself (it enforces its own).
    (("PIPELINING", "8BITMIME"), "SIZE=171 BODY=8BITMIME", b"MAIL FROM:<a@sender.example> BODY=8BITMIME"),
    (("PIPELINING", "SIZE 100000"), "SIZE=171", b"MAIL FROM:<a@sender.example> SIZE=171"),
])
def test_only_parameters_the_upstream_advertised_are_forwarded(make_proxy, extensions, sent, forwarded):
    with RecordingUpstream(ehlo_extensions=extensions) as recorder:
        proxy = make_proxy(recorder.address)
        with connect(proxy) as client:
            client.ehlo("client.test")
            assert client.docmd("MAIL", f"FROM:<a@sender.example> {sent}")[0] == 250
        recorder.wait_ended(1)
        assert forwarded in recorder.sessions[0].commands


def test_a_parameter_the_client_was_not_offered_is_refused(make_proxy):
    with RecordingUpstream() as recorder:  # no DSN
        proxy = make_proxy(recorder.address)
        with connect(proxy) as client:
            client.ehlo("client.test")
            assert client.docmd("MAIL", "FROM:<a@sender.example> RET=HDRS") == (
                555, b"5.5.4 Unsupported option: RET"
            )
            assert client.docmd("MAIL", "FROM:<a@sender.example>")[0] == 250
        recorder.wait_ended(1)
        assert not any(b"RET=" in c for c in recorder.sessions[0].commands)


# --- the client's identity and the upstream's AUTH ------------------------------------------


def test_missing_xclient_is_warned_about_once_and_counted(make_proxy):
    with RecordingUpstream(xclient=False) as recorder:
        proxy = make_proxy(recorder.address)
        for _ in range(2):
            with connect(proxy) as client:
                assert client.ehlo("client.test")[0] == 250
        recorder.wait_ended(2)
    assert proxy.metric("mailproxy_upstream_identity_missing_total") == 2
    assert proxy.log().count("does not offer XCLIENT") == 1


def test_an_upstream_asking_for_more_after_auth_plain_is_a_temporary_failure(make_proxy):
    with RecordingUpstream(auth_reply=b"334 VXNlcm5hbWU6", ehlo_extensions=("PIPELINING", "AUTH PLAIN")) as recorder:
        proxy = make_proxy(
            recorder.address,
            auth={"backends": ["upstream"]},
            listeners=[{"name": "submission", "mode": "submission", "upstream": "sink", "allow_plaintext_auth": True}],
        )
        client = connect(proxy, "submission")
        client.ehlo("client.test")
        assert auth_plain(client, "alice@example.test", "pw") == (454, b"4.7.0 Temporary authentication failure")
        assert client.noop()[0] == 250  # on a fresh upstream session
        client.quit()
        assert len(recorder.sessions) == 2
    # The upstream's failure is explained in one line, without a traceback.
    assert "authenticate failed: protocol: upstream asked for more" in proxy.log()


def test_a_domain_with_empty_labels_is_not_local(proxy):
    with connect(proxy) as client:
        client.ehlo("client.test")
        assert client.mail("a@sender.example")[0] == 250
        assert client.rcpt("user@example.test..")[0] == 554
        assert client.rcpt("user@.example.test")[0] == 554
        assert client.rcpt("user@example.test.")[0] == 250


# --- peers that stop reading, shutdowns, the upstream's 421, odd bytes ------------------------


def open_fds(proxy) -> int:
    return len(os.listdir(f"/proc/{proxy.process.pid}/fd"))


def test_an_upstream_that_stops_reading_mid_message_gets_the_client_451(make_proxy):
    with RecordingUpstream(stall_in_data=True) as recorder:
        proxy = make_proxy(recorder.address, upstreams=upstream(recorder, reply_timeout=2.0, data_timeout=3.0))
        client = open_transaction(proxy)
        client.sock.settimeout(60)
        started = time.monotonic()
        # Far more than the socket buffers between the proxy and a peer that reads nothing.
        code, _ = client.data(b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 9000)
        assert code == 451
        assert time.monotonic() - started < 30  # not for ever
        client.quit()
    assert proxy.metric("mailproxy_upstream_failures_total", stage="timeout") == 1


@pytest.mark.parametrize("flood", [
    b"BOGUS\r\n" * 100000,  # replies pile up faster than a non-reader takes them
    b"EHLO x\r\n" * 5000 + b"STARTTLS\r\n",  # the go-ahead for TLS waits on the same
])
def test_a_client_that_reads_no_replies_is_let_go(make_proxy, certs, flood):
    with RecordingUpstream() as recorder:
        proxy = make_proxy(recorder.address, listeners=mx(
            tls="starttls", cert_file=str(certs[1]), key_file=str(certs[2]),
            command_timeout=2.0, idle_timeout=60, max_errors=10**6, soft_error_limit=10**6,
        ))
        with connect(proxy) as warmup:  # whatever the process opens on first use
            warmup.noop()
        time.sleep(0.5)
        before = open_fds(proxy)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
        sock.connect(("127.0.0.1", proxy.port("mx")))
        sock.settimeout(30)
        sock.sendall(flood)
        recorder.wait_ended(1)  # the warm-up's upstream session
        started = time.monotonic()
        while len(recorder.sessions) < 2 and time.monotonic() < started + 15:
            time.sleep(0.05)  # the flooding session is in, and paired upstream
        assert len(recorder.sessions) == 2 and open_fds(proxy) > before
        deadline = time.monotonic() + 40  # the idle timeout (60 s) must not be what ends it
        while open_fds(proxy) > before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert open_fds(proxy) <= before, "the proxy still holds the socket of a client that reads nothing"
        sock.close()


def test_auth_after_the_upstream_hung_up_reconnects_with_the_login(make_proxy):
    with RecordingUpstream(xclient=True, idle_close=1.0) as recorder:
        proxy = make_proxy(recorder.address, listeners=[{
            "name": "submission", "mode": "submission", "upstream": "sink", "allow_plaintext_auth": True,
        }])
        client = connect(proxy, "submission")
        client.ehlo("client.test")
        recorder.wait_ended(1)  # the upstream hung up while the client thought
        assert auth_plain(client, "alice@example.test", "alice-secret")[0] == 235
        assert client.mail("alice@example.test")[0] == 250
        client.quit()
        assert any(c.startswith(b"XCLIENT") and b"LOGIN=alice@example.test" in c
                   for c in recorder.sessions[1].commands)


def test_a_shutdown_waits_for_the_upstreams_answer_to_a_message(make_proxy):
    with RecordingUpstream(delay_after_data=3.0) as recorder:
        proxy = make_proxy(recorder.address, proxy={"hostname": "proxy.test", "resolve_client_names": False,
                                                    "shutdown_grace": 0.5})
        client = open_transaction(proxy)
        client.docmd("DATA")
        client.sock.sendall(MESSAGE + b".\r\n")
        recorder_has_it = time.monotonic() + 10
        while not recorder.messages and time.monotonic() < recorder_has_it:
            time.sleep(0.05)
        proxy.process.send_signal(signal.SIGTERM)
        assert client.getreply() == (250, b"queued")  # not a cut connection: no duplicate
        assert proxy.process.wait(30) == 0


def test_an_upstream_421_ends_the_client_session(make_proxy):
    with RecordingUpstream(replies={b"NOOP": b"421 4.7.0 Error: too many errors"}) as recorder:
        proxy = make_proxy(recorder.address)
        client = connect(proxy)
        client.ehlo("client.test")
        assert client.noop() == (421, b"4.7.0 Error: too many errors")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
        recorder.wait_ended(1)
        assert len(recorder.sessions) == 1  # no fresh upstream session behind its back


def test_recipients_over_the_limit_are_for_another_transaction_not_errors(make_proxy):
    with RecordingUpstream() as recorder:
        proxy = make_proxy(recorder.address, listeners=mx(max_recipients=5, max_errors=20))
        client = connect(proxy)
        client.ehlo("client.test")
        assert client.mail("a@sender.example")[0] == 250
        codes = [client.rcpt(f"u{i}@example.test")[0] for i in range(30)]
        assert codes == [250] * 5 + [452] * 25
        assert client.data(MESSAGE)[0] == 250
        client.quit()


def test_undecodable_bytes_quoted_in_a_reply_do_not_break_the_session(proxy):
    with connect(proxy) as client:
        client.ehlo("client.test")
        client.send(b"MAIL FROM:<a@sender.example> BODY=\xff\r\n")
        assert client.getreply()[0] == 555
        assert client.mail("a@sender.example")[0] == 250
        client.send(b"RCPT TO:<\xff@elsewhere.example>\r\n")
        code, text = client.getreply()
        assert code == 554 and text.endswith(b"Relay access denied")
        assert client.noop()[0] == 250
