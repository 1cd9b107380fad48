"""/readyz: ready while the listeners are open and the upstreams answer the probes;
not ready, and why, when an upstream is down or from SIGTERM on, while sessions drain."""

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.support.clients import connect, start_transaction
from tests.support.servers import SMTP_SINK, wait_for_listen, wait_until_refused

pytestmark = pytest.mark.integration

FAST_PROBES = {"upstream_probe_interval": 0.2}
READY = (200, "ready\n")


def readyz(proxy) -> tuple[int, str]:
    try:
        return 200, proxy.scrape("/readyz")
    except urllib.error.HTTPError as answer:
        return answer.code, answer.read().decode()


def wait_for_readyz(proxy, wanted, timeout: float = 20.0) -> tuple[int, str]:
    """Poll /readyz until `wanted(answer)`; the answer then."""
    deadline = time.monotonic() + timeout
    while True:
        answer = readyz(proxy)
        if wanted(answer):
            return answer
        assert time.monotonic() < deadline, f"/readyz still answers {answer} after {timeout}s"
        time.sleep(0.05)


def is_ready(answer: tuple[int, str]) -> bool:
    return answer[0] == 200


@contextlib.contextmanager
def refused_port():
    """A loopback port held by a socket that is bound but does not listen: connections
    to it are refused, and no other program takes the port meanwhile."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@contextlib.contextmanager
def smtp_sink_on(port: int):
    """Postfix's smtp-sink on a port chosen before it starts (SmtpSink picks its own)."""
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root
    sink = subprocess.Popen([SMTP_SINK, *user, f"inet:127.0.0.1:{port}", "16"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_listen(port, timeout=10, process=sink)
        yield
    finally:
        sink.terminate()
        sink.wait(10)


def test_ready_while_serving_with_a_live_upstream(sink, make_proxy):
    proxy = make_proxy(sink.address, metrics=FAST_PROBES)
    assert wait_for_readyz(proxy, is_ready) == READY
    assert proxy.metric("mailproxy_upstream_up", upstream="sink") == 1
    head = urllib.request.Request(f"http://127.0.0.1:{proxy.metrics_port}/readyz", method="HEAD")
    with urllib.request.urlopen(head, timeout=5) as answer:  # load balancers' checks often use HEAD
        assert (answer.status, answer.read()) == (200, b"")


def test_an_unreachable_upstream_makes_it_unready_until_it_answers(make_proxy):
    with refused_port() as port:
        proxy = make_proxy(f"127.0.0.1:{port}", metrics=FAST_PROBES)
        down = wait_for_readyz(proxy, lambda answer: "unreachable" in answer[1])
        assert down == (503, "not ready: upstream sink unreachable (connection refused)\n")
        assert proxy.metric("mailproxy_upstream_up", upstream="sink") == 0
        time.sleep(1)  # room for more probes: the change is logged once, not per probe
    with smtp_sink_on(port):
        assert wait_for_readyz(proxy, is_ready) == READY
        assert proxy.metric("mailproxy_upstream_up", upstream="sink") == 1
    log = proxy.log()
    assert log.count(f"upstream sink at 127.0.0.1:{port} unreachable (connection refused)") == 1, log
    assert log.count(f"upstream sink at 127.0.0.1:{port} reachable again") == 1, log


def test_without_probes_upstreams_count_as_reachable(make_proxy):
    with refused_port() as port:
        proxy = make_proxy(f"127.0.0.1:{port}", metrics={"upstream_probe_interval": 0})
        assert wait_for_readyz(proxy, is_ready) == READY
        assert "mailproxy_upstream_up{" not in proxy.scrape()


def test_probes_come_from_the_upstreams_source_address(make_proxy):
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        upstream.settimeout(20)
        address = f"127.0.0.1:{upstream.getsockname()[1]}"
        make_proxy(address, upstreams={"sink": {"address": address, "source_address": "127.0.0.9"}},
                   metrics=FAST_PROBES)
        connection, peer = upstream.accept()  # the first probe: no client has connected
        connection.close()
    assert peer[0] == "127.0.0.9"


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_makes_it_unready_first_while_an_open_session_drains(sink, make_proxy, workers):
    # A grace period no loaded machine runs out of: the session ends when the test says.
    proxy = make_proxy(sink.address, proxy={"shutdown_grace": 60.0, "workers": workers}, metrics=FAST_PROBES)
    assert wait_for_readyz(proxy, is_ready) == READY
    assert proxy.metric("mailproxy_upstream_up", upstream="sink") == 1  # workers' merged scrape too
    client = connect(proxy)
    start_transaction(client)
    proxy.process.send_signal(signal.SIGTERM)
    assert wait_for_readyz(proxy, lambda answer: not is_ready(answer)) == (503, "not ready: stopping\n")
    # The listeners close too, while the session stays open ...
    wait_until_refused(proxy.port("mx"))
    assert readyz(proxy) == (503, "not ready: stopping\n")
    # ... and finishes its message.
    assert client.data(b"Subject: late\r\n\r\nok\r\n")[0] == 250
    client.quit()
    assert proxy.process.wait(30) == 0
    assert sink.bodies(expected=1) == [b"Subject: late\n\nok\n"]
