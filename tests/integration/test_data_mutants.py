"""DATA where one wrong line in the proxy would lose or double mail and the other tests
would not notice: the proxy's own refusals of DATA, the upstream's answers at the edges
of each reply class, the outcome each is counted as, the header lines plugins add, and
which upstream session a message goes out on."""

import signal
import smtplib
import socket
import threading
import time

import pytest

from tests.support.clients import connect, start_transaction
from tests.support.recorder import RecordingUpstream
from tests.support.scripted import ThreadedServer

pytestmark = pytest.mark.integration

MESSAGE = b"Subject: edges\r\n\r\nbody\r\n"
OUTCOMES = ("delivered", "rejected", "tempfailed", "unknown")

# Drop-in plugins, written to a directory of the test's own: one stamps every message
# at MAIL with the count of messages the upstream took so far in the session (the
# proxy still streams), the other reads whole messages and refuses some.
STAMP = '''
from mailproxy import hookimpl


class Plugin:
    def __init__(self, settings, context):
        pass

    @hookimpl
    def smtp_mail(self, session, envelope, address, params):
        envelope.add_header("X-Taken-Before", str(session.transactions))
'''
JUDGE = '''
from mailproxy import Verdict, hookimpl


class Plugin:
    def __init__(self, settings, context):
        pass

    @hookimpl
    def smtp_data(self, session, envelope, message):
        if b"refuse me" in message:
            return Verdict.reject(554, "5.7.1", "judged and refused")
        if b"not now" in message:
            return Verdict.tempfail(451, "4.7.1", "judged, not now")
        envelope.add_header("X-Judged", "fine")
        return None
'''


def outcomes(proxy) -> dict[str, float]:
    return {o: proxy.metric("mailproxy_messages_total", outcome=o) for o in OUTCOMES}


def counted(before: dict[str, float], after: dict[str, float]) -> list[str]:
    """The outcomes counted between two readings of `outcomes`."""
    return [o for o in OUTCOMES for _ in range(int(after[o] - before[o]))]


def send_message(client, message: bytes = MESSAGE) -> tuple[int, bytes]:
    """DATA and the message; the reply to DATA if it was no go-ahead, else the reply to
    the end of the message."""
    code, text = client.docmd("DATA")
    if code != 354:
        return code, text
    client.send(message + b".\r\n")
    return client.getreply()


def plugins_in(tmp_path, **sources: str) -> dict:
    directory = tmp_path / "plugins"
    directory.mkdir()
    for name, source in sources.items():
        (directory / f"{name}.py").write_text(source)
    return {"enabled": ["access", *sources], "directories": [str(directory)]}


def test_data_the_proxy_refuses_itself_reaches_no_upstream(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address)
        with connect(proxy) as client:
            client.ehlo("client.test")
            assert client.docmd("DATA") == (503, b"5.5.1 Error: need MAIL command")
            assert client.mail("a@sender.example")[0] == 250
            assert client.docmd("DATA") == (554, b"5.5.1 Error: no valid recipients")
            assert client.rcpt("user@example.test")[0] == 250
            assert client.docmd("DATA", "now") == (501, b"5.5.4 Syntax: DATA")
        [session] = upstream.wait_ended(1)
    assert b"DATA" not in session.commands and upstream.messages == []


def test_the_upstreams_answer_to_a_message_at_the_edges_of_each_class(make_proxy):
    # Only 250 is a delivery; any other 2xx is passed on as it is. A 3xx answers no
    # message (451, outcome unknown); 4xx is a temporary failure, 5xx a refusal.
    cases = [
        (b"250 2.0.0 queued", (250, b"2.0.0 queued"), "delivered"),
        (b"299 2.0.0 odd", (299, b"2.0.0 odd"), "tempfailed"),
        (b"300 3.0.0 odd", (451, b"4.3.0 Upstream failure, message not accepted, try again later"), "unknown"),
        (b"399 3.0.0 odd", (451, b"4.3.0 Upstream failure, message not accepted, try again later"), "unknown"),
        (b"400 4.0.0 lowest", (400, b"4.0.0 lowest"), "tempfailed"),
        (b"499 4.0.0 highest", (499, b"4.0.0 highest"), "tempfailed"),
        (b"500 5.0.0 lowest", (500, b"5.0.0 lowest"), "rejected"),
    ]
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address)
        with connect(proxy) as client:
            for final_reply, reply, outcome in cases:
                upstream.final_reply = final_reply
                before = outcomes(proxy)
                start_transaction(client)
                assert send_message(client) == reply, final_reply
                assert counted(before, outcomes(proxy)) == [outcome], final_reply
    assert len(upstream.messages) == len(cases)


@pytest.mark.parametrize("data_mode", ["stream", "whole"])
def test_the_upstreams_answer_to_data_at_the_edges_of_each_class(make_proxy, data_mode):
    # Anything but 354 sends no message: a 4xx or 5xx is the answer to it, relayed and
    # counted; a 3xx, or a line that is no reply, is no answer at all. The session
    # goes on either way.
    cases = [
        (b"no reply", (451, b"4.3.0 Upstream failure, message not accepted, try again later"), "tempfailed"),
        (b"399 3.0.0 odd", (451, b"4.3.0 Upstream failure, message not accepted, try again later"), "tempfailed"),
        (b"400 4.0.0 lowest", (400, b"4.0.0 lowest"), "tempfailed"),
        (b"554 5.5.1 no DATA for you", (554, b"5.5.1 no DATA for you"), "rejected"),
    ]
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, listener={"data_mode": data_mode})
        with connect(proxy) as client:
            for data_reply, reply, outcome in cases:
                upstream.data_reply = data_reply
                before = outcomes(proxy)
                start_transaction(client)
                assert send_message(client) == reply, data_reply
                assert counted(before, outcomes(proxy)) == [outcome], data_reply
            assert client.noop()[0] == 250
    assert upstream.messages == []


def test_streamed_messages_carry_the_header_lines_added_before_data(make_proxy, tmp_path):
    # The count of messages the upstream took goes up with its 250 alone.
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, plugins=plugins_in(tmp_path, stamp=STAMP))
        with connect(proxy) as client:
            for final_reply in (b"554 5.7.1 no", b"250 queued", b"250 queued"):
                upstream.final_reply = final_reply
                start_transaction(client)
                assert send_message(client)[0] == int(final_reply[:3])
    assert upstream.messages == [b"X-Taken-Before: %d\r\n" % n + MESSAGE.removesuffix(b"\r\n") for n in (0, 0, 1)]


def test_a_data_hook_refuses_before_the_upstream_hears_data(make_proxy, tmp_path):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, plugins=plugins_in(tmp_path, stamp=STAMP, judge=JUDGE))
        with connect(proxy) as client:
            for body, reply, outcome in [
                (b"refuse me\r\n", (554, b"5.7.1 judged and refused"), "rejected"),
                (b"not now\r\n", (451, b"4.7.1 judged, not now"), "tempfailed"),
                (b"fine\r\n", (250, b"queued"), "delivered"),
            ]:
                before = outcomes(proxy)
                start_transaction(client)
                assert send_message(client, b"Subject: judged\r\n\r\n" + body) == reply
                assert counted(before, outcomes(proxy)) == [outcome]
        [session] = upstream.wait_ended(1)
    assert session.commands.count(b"DATA") == 1
    assert upstream.messages == [b"X-Taken-Before: 0\r\nX-Judged: fine\r\nSubject: judged\r\n\r\nfine"]


def test_a_message_over_the_limit_taken_whole_is_counted_as_rejected(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, listener={"data_mode": "whole", "max_message_size": 1024})
        with connect(proxy) as client:
            start_transaction(client)
            assert send_message(client, b"Subject: big\r\n\r\n" + b"y" * 2000 + b"\r\n")[0] == 552
    assert outcomes(proxy) == {"delivered": 0, "rejected": 1, "tempfailed": 0, "unknown": 0}
    assert upstream.messages == []


def wait_for_noops(upstream: RecordingUpstream, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while bytes(upstream.received).count(b"NOOP\r\n") < count:
        assert time.monotonic() < deadline, f"fewer than {count} NOOPs reached the upstream"
        time.sleep(0.02)


def test_only_a_2xx_to_a_keepalive_noop_keeps_the_upstream_session(make_proxy):
    # Any other answer drops the session; the message goes out on a new one, with the
    # envelope replayed.
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, listener={"data_mode": "whole"},
                           upstreams={"sink": {"address": upstream.address, "keepalive": 0.2}})
        with connect(proxy) as client:
            for noop_reply, kept in [(b"200 ok", True), (b"299 ok", True), (b"300 odd", False),
                                     (b"250 ok", True), (b"421 4.4.2 bye", False), (b"no reply", False)]:
                upstream.replies[b"NOOP"] = noop_reply
                sessions = len(upstream.sessions)
                start_transaction(client)
                assert client.docmd("DATA")[0] == 354
                client.send(b"Subject: paused\r\n\r\n")
                wait_for_noops(upstream, bytes(upstream.received).count(b"NOOP\r\n") + 1)
                client.send(b"after the pause\r\n.\r\n")
                assert client.getreply() == (250, b"queued"), noop_reply
                assert len(upstream.sessions) == sessions + (0 if kept else 1), noop_reply
    assert len(upstream.messages) == 6


@pytest.mark.parametrize("noops", [0, 1], ids=["before any NOOP", "after a NOOP"])
def test_a_client_leaving_mid_message_taken_whole_ends_the_upstream_session_politely(make_proxy, noops):
    # Nothing of the message went out and every NOOP was answered: the upstream is in
    # step and gets its QUIT.
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, listener={"data_mode": "whole"},
                           upstreams={"sink": {"address": upstream.address, "keepalive": 0.2 if noops else 60.0}})
        client = connect(proxy)
        start_transaction(client)
        assert client.docmd("DATA")[0] == 354
        client.send(b"Subject: left\r\n\r\nhalf\r\n")
        wait_for_noops(upstream, noops)
        client.close()
        [session] = upstream.wait_ended(1)
    assert session.commands[-1] == b"QUIT" and b"DATA" not in session.commands
    assert upstream.messages == []


class SlowNoop(dict):
    """The recorder's `replies`, with NOOP answered only after a pause."""

    def __getitem__(self, verb: bytes) -> bytes:
        if verb == b"NOOP":
            time.sleep(2.0)
        return super().__getitem__(verb)


def test_a_client_leaving_while_a_keepalive_noop_is_unanswered_drops_the_upstream(make_proxy):
    # Its answer is still to come: a QUIT now would take the NOOP's reply for its own,
    # so the upstream session is dropped instead.
    with RecordingUpstream(replies=SlowNoop({b"NOOP": b"250 ok"})) as upstream:
        proxy = make_proxy(upstream.address, listener={"data_mode": "whole"},
                           upstreams={"sink": {"address": upstream.address, "keepalive": 0.2}})
        client = connect(proxy)
        start_transaction(client)
        assert client.docmd("DATA")[0] == 354
        client.send(b"Subject: left\r\n\r\nhalf\r\n")
        wait_for_noops(upstream, 1)
        client.close()
        [session] = upstream.wait_ended(1)
    assert session.commands[-1] == b"NOOP"
    assert upstream.messages == []


def test_a_keepalive_noop_answered_after_the_message_ends_is_the_last_one(make_proxy):
    # The client finishes while a NOOP is unanswered: the proxy waits for that answer,
    # sends the message, and keeps no timer. A NOOP after it would go to an upstream
    # session that may already carry the next transaction's commands.
    with RecordingUpstream(replies=SlowNoop({b"NOOP": b"250 ok"})) as upstream:
        proxy = make_proxy(upstream.address, listener={"data_mode": "whole"},
                           upstreams={"sink": {"address": upstream.address, "keepalive": 0.2}})
        with connect(proxy) as client:
            start_transaction(client)
            assert client.docmd("DATA")[0] == 354
            client.send(b"Subject: paused\r\n\r\n")
            wait_for_noops(upstream, 1)
            client.send(b"after the pause\r\n.\r\n")
            assert client.getreply() == (250, b"queued")
            time.sleep(1.0)  # five keepalive intervals of an idle session
            assert bytes(upstream.received).count(b"NOOP\r\n") == 1
    assert len(upstream.messages) == 1


def test_a_client_silent_after_the_go_ahead_has_the_command_timeout_and_not_a_second_more(make_proxy):
    # The deadline for a message is command_timeout plus a second per min_data_rate
    # bytes received: before the first byte, command_timeout exactly. At one byte a
    # second, a count one byte off moves it a whole second: every client would be cut
    # off as soon as it is told to go ahead, or a stalled one would hold its slot longer.
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, listener={"command_timeout": 1.0, "min_data_rate": 1})
        with connect(proxy) as client:
            start_transaction(client)
            assert client.docmd("DATA")[0] == 354
            told = time.monotonic()
            assert client.getreply() == (421, b"4.4.2 proxy.test Timeout exceeded, closing connection")
            waited = time.monotonic() - told
        upstream.wait_ended(1)
    assert 0.5 < waited < 1.5, waited
    assert upstream.messages == []


class HeldMessage(ThreadedServer):
    """An upstream that answers everything up to DATA, then stops reading as soon as the
    message starts to arrive (`holding`), so that the proxy's writes back up, until
    `release` is set; then it takes the rest and never answers the end of it."""

    def __init__(self) -> None:
        super().__init__()
        self.holding, self.release = threading.Event(), threading.Event()

    def serve(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as lines:
            try:
                connection.sendall(b"220 held ESMTP\r\n")
                for line in lines:
                    if line.upper().startswith(b"DATA"):
                        connection.sendall(b"354 go ahead\r\n")
                        connection.recv(1, socket.MSG_PEEK)  # the message is on its way
                        self.holding.set()
                        self.release.wait(60)
                        while connection.recv(65536):  # the message, then QUIT: no answer
                            pass
                        return
                    connection.sendall(b"250 ok\r\n")
            except OSError:
                pass  # the proxy dropped the connection


def wait_for_log(proxy, text: str, timeout: float = 30.0) -> None:
    """Until the proxy has logged `text`; fails once it has exited or `timeout` passed
    without it."""
    deadline = time.monotonic() + timeout
    while text not in proxy.log():
        if proxy.process.poll() is not None or time.monotonic() > deadline:
            assert text in proxy.log(), f"never logged: {text}\n{proxy.log()[-4000:]}"
        time.sleep(0.02)


def test_a_shutdown_outlasts_an_upstream_slow_to_take_a_message_and_the_client_hears_its_fate(make_proxy):
    # A shutdown waits data_timeout + reply_timeout for a message the upstream is taking,
    # so that the client hears what became of it instead of being cut off and sending it
    # again. That holds only if taking the message and answering it share one
    # data_timeout: an upstream that is slow to read it (more than the sockets hold) and
    # then never answers must have run out of time, the session telling its client
    # 451, before the shutdown stops waiting.
    message = b"Subject: held\r\n\r\n" + (b"x" * 998 + b"\r\n") * 8000
    with HeldMessage() as upstream:
        proxy = make_proxy(upstream.address, listener={"data_mode": "whole"}, proxy={"shutdown_grace": 0.5},
                           upstreams={"sink": {"address": upstream.address, "connect_timeout": 3.0,
                                               "reply_timeout": 1.0, "data_timeout": 3.0}})
        try:
            client = connect(proxy)
            start_transaction(client)
            assert client.docmd("DATA")[0] == 354
            client.sock.sendall(message + b".\r\n")
            assert upstream.holding.wait(30)
            proxy.process.send_signal(signal.SIGTERM)
            wait_for_log(proxy, "waiting for 1 message(s) the upstream is taking")
            # The upstream takes the rest 1.5 s later and never answers. Its data_timeout
            # runs out 3 s after the message began, the shutdown's wait 0.5 + 3 + 1 s
            # after the signal; with 3 s to take it and 3 s more to answer, the session
            # would still be waiting when the shutdown cut it off.
            time.sleep(1.5)
            upstream.release.set()
            client.sock.settimeout(30)
            assert client.getreply()[0] == 451
            assert proxy.process.wait(30) == 0
        finally:
            upstream.release.set()
    # The session's own verdict on it (the proxy has exited: its log, not its metrics).
    assert "outcome unknown: the upstream did not answer the end of the message" in proxy.log()
    assert "stopped while the upstream had the message" not in proxy.log()


class AnswersSlowlyAfterAMessage(ThreadedServer):
    """An upstream that takes the first message (`taken` set as it answers it) and then
    answers each command a little under reply_timeout: a session busy with a pipelined
    batch when a shutdown's wait runs out."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = threading.Event()

    def serve(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as lines:
            try:
                connection.sendall(b"220 slow ESMTP\r\n")
                in_data = False
                for line in lines:
                    if in_data:
                        if line == b".\r\n":
                            in_data = False
                            connection.sendall(b"250 2.0.0 queued as ONE\r\n")
                            self.taken.set()
                        continue
                    if self.taken.is_set():
                        time.sleep(0.9)
                    in_data = line.upper().startswith(b"DATA")
                    connection.sendall(b"354 go ahead\r\n" if in_data else b"250 ok\r\n")
            except OSError:
                pass  # the proxy dropped the connection


def test_a_shutdown_still_tells_a_pipelining_client_its_message_was_taken(make_proxy):
    # RFC 2920 lets a client send the end of a message and its next transaction in one
    # go, and the proxy holds the replies to such a batch until it has them all. A
    # shutdown that closes the session meanwhile must send what it holds: without the
    # upstream's 250 the client sends the message again, and it is delivered twice.
    with AnswersSlowlyAfterAMessage() as upstream:
        proxy = make_proxy(upstream.address, listener={"data_mode": "whole"}, proxy={"shutdown_grace": 0.5},
                           upstreams={"sink": {"address": upstream.address, "connect_timeout": 3.0,
                                               "reply_timeout": 1.0, "data_timeout": 3.0, "keepalive": 30.0}})
        client = connect(proxy)
        start_transaction(client)
        assert client.docmd("DATA")[0] == 354
        client.sock.sendall(b"Subject: one\r\n\r\none\r\n.\r\nMAIL FROM:<a@sender.example>\r\n"
                            + b"RCPT TO:<user@example.test>\r\n" * 5 + b"DATA\r\n")
        assert upstream.taken.wait(30)
        proxy.process.send_signal(signal.SIGTERM)
        assert proxy.process.wait(30) == 0
        client.sock.settimeout(10)
        heard = b""
        while chunk := client.sock.recv(4096):
            heard += chunk
    assert heard.startswith(b"250 2.0.0 queued as ONE\r\n"), heard
