"""/readyz: ready while the listeners are open and the upstreams answer the probes;
not ready, and why, when an upstream is down or from SIGTERM on, while sessions drain.
The probes beside the supervisor's forks, and the HTTP server under idle connections."""

import contextlib
import os
import re
import select
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mailproxy.proxy.metrics_http import MAX_CONNECTIONS
from tests.support.clients import connect, start_transaction
from tests.support.configs import base_config
from tests.support.proxy import ProxyProcess, to_toml
from tests.support.servers import SMTP_SINK, wait_for_listen, wait_until_refused

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FAST_PROBES = {"upstream_probe_interval": 0.2}
READY = (200, "ready\n")


def readyz(proxy, path: str = "/readyz") -> tuple[int, str]:
    try:
        return 200, proxy.scrape(path)
    except urllib.error.HTTPError as answer:
        return answer.code, answer.read().decode()


def wait_for_readyz(
    proxy, wanted, timeout: float = 20.0, path: str = "/readyz", interval: float = 0.05,
) -> tuple[int, str]:
    """Poll `path` until `wanted(answer)`; the answer then. A metrics port that does
    not accept yet is no answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = readyz(proxy, path)
        except (urllib.error.URLError, ConnectionError):
            answer = None
        if answer is not None and wanted(answer):
            return answer
        assert time.monotonic() < deadline, f"{path} still answers {answer} after {timeout}s"
        time.sleep(interval)


def is_ready(answer: tuple[int, str]) -> bool:
    return answer[0] == 200


def wait_until(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.01)


def workers_started(proxy) -> list[tuple[int, int]]:
    """(worker number, pid) of each start the supervisor logged, in order."""
    return [(int(number), int(pid)) for number, pid in re.findall(r"worker (\d+) started, pid (\d+)", proxy.log())]


def mx_listener(name: str, upstream: str) -> dict:
    return {"name": name, "mode": "mx", "upstream": upstream, "local_domains": ["example.test"]}


@contextlib.contextmanager
def refused_port():
    """A loopback port held by a socket that is bound but does not listen: connections
    to it are refused, and no other program takes the port meanwhile."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@contextlib.contextmanager
def silent_port():
    """A loopback port where connections never open, as behind a firewall that drops
    packets: it listens with a full backlog, so the kernel drops further SYNs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(server.getsockname())
            yield server.getsockname()[1]
        finally:
            for filler in fillers:
                filler.close()


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


@pytest.mark.parametrize("workers", [1, 2])
def test_with_a_shutdown_delay_it_says_stopping_while_it_still_accepts(sink, make_proxy, workers):
    # The delay is the time a client has to connect after the first 503: generous.
    proxy = make_proxy(sink.address, proxy={"workers": workers, "shutdown_delay": 5.0, "shutdown_grace": 60.0})
    assert wait_for_readyz(proxy, is_ready) == READY
    proxy.process.send_signal(signal.SIGTERM)
    assert wait_for_readyz(proxy, lambda answer: not is_ready(answer)) == (503, "not ready: stopping\n")
    with connect(proxy) as client:  # a new client, after the balancer was told
        client.sendmail("a@sender.example", ["user@example.test"], b"Subject: just in time\r\n\r\nok\r\n")
    wait_until_refused(proxy.port("mx"))  # then the listeners close
    assert proxy.process.wait(30) == 0
    assert sink.bodies(expected=1) == [b"Subject: just in time\n\nok\n"]


def test_with_workers_the_first_ready_means_a_worker_accepts(sink, certs, users_file, tmp_path):
    for start in range(5):  # a race: a few starts
        directory = tmp_path / f"start{start}"
        directory.mkdir()
        proxy = ProxyProcess(base_config(sink.address, certs, users_file, proxy={"workers": 2}), directory)
        # start() waits for the listeners; /readyz is asked from the first moment instead.
        starting = threading.Thread(target=proxy.start)
        starting.start()
        try:
            assert wait_for_readyz(proxy, is_ready, interval=0.002) == READY
            with smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=10) as client:
                assert client.noop()[0] == 250
        finally:
            starting.join()
            assert proxy.stop() == 0, proxy.log()


def test_readyz_of_one_listener_follows_only_its_own_upstream(sink, make_proxy):
    with refused_port() as port:
        proxy = make_proxy(
            sink.address, upstreams={"gone": {"address": f"127.0.0.1:{port}"}},
            listeners=[mx_listener("mx", "sink"), mx_listener("relay", "gone")], metrics=FAST_PROBES,
        )
        down = (503, "not ready: upstream gone unreachable (connection refused)\n")
        assert wait_for_readyz(proxy, lambda answer: "unreachable" in answer[1]) == down
        assert wait_for_readyz(proxy, is_ready, path="/readyz?listener=mx") == READY
        assert readyz(proxy, "/readyz?listener=relay") == down
        assert readyz(proxy) == down  # every listener
        assert readyz(proxy, "/readyz?listener=pop3") == (404, "no such listener\n")


def test_an_upstream_only_the_route_hook_picks_is_probed_but_decides_no_readiness(sink, make_proxy):
    with refused_port() as port:
        # No listener names it: a `route` hook would.
        proxy = make_proxy(sink.address, upstreams={"routed": {"address": f"127.0.0.1:{port}"}}, metrics=FAST_PROBES)
        wait_until(lambda: 'mailproxy_upstream_up{upstream="routed"}' in proxy.scrape(), "a probe of routed")
        assert proxy.metric("mailproxy_upstream_up", upstream="routed") == 0
        assert wait_for_readyz(proxy, is_ready) == READY


def test_a_probe_that_hangs_delays_no_worker_restart_and_loses_no_stop(sink, make_proxy):
    # Each probe of `silent` waits up to a minute; meanwhile workers die and restart.
    with silent_port() as port:
        proxy = make_proxy(
            sink.address, proxy={"workers": 2}, upstreams={"silent": {"address": f"127.0.0.1:{port}"}},
            listeners=[mx_listener("mx", "sink"), mx_listener("relay", "silent")],
            metrics={"upstream_probe_interval": 0.1, "upstream_probe_timeout": 60.0},
        )
        wait_until(lambda: len(workers_started(proxy)) == 2, "two workers")
        (_, first), (_, second) = workers_started(proxy)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: len(workers_started(proxy)) == 3, "worker 0 restarted while a probe hangs")
        # SIGTERM the moment the supervisor restarts worker 1: it may come during the fork.
        os.kill(second, signal.SIGKILL)
        wait_until(lambda: f"(pid {second}) exited with status 9; restarting" in proxy.log(), "worker 1 restarting")
        proxy.process.send_signal(signal.SIGTERM)
        assert proxy.process.wait(30) == 0
    assert "Exception ignored" not in proxy.log()


# What a supervisor does as it starts: probes in a thread, and forks workers, each of
# which counts something at once.
FORKS_WHILE_PROBING = r"""
import os, sys, time
from mailproxy import metrics
from mailproxy.config import load_config
from mailproxy.proxy.health import Readiness, UpstreamProbes

config = load_config(sys.argv[1])
upstream_port = config.upstreams["sink"].address.port

def upstream_sockets():
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            inodes.add(os.readlink(f"/proc/self/fd/{fd}").removeprefix("socket:[").removesuffix("]"))
        except OSError:
            pass
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in list(table)[1:]]
    return [row for row in rows if int(row[2].split(":")[1], 16) == upstream_port and row[9] in inodes]

UpstreamProbes(config, Readiness.of(config)).start()
for n in range(40):
    pid = os.fork()
    if pid == 0:
        metrics.child(metrics.connections, "smtp", "mx").inc()
        os._exit(3 if upstream_sockets() else 0)
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            sys.exit(f"child {n} hung")
        time.sleep(0.001)
    if os.waitstatus_to_exitcode(done[1]) != 0:
        sys.exit(f"child {n} held a connection to the upstream")
"""


def test_a_worker_forked_while_the_probes_run_neither_hangs_nor_holds_their_connections(sink, tmp_path):
    config = tmp_path / "mailproxy.toml"
    config.write_text(to_toml({
        "metrics": {"upstream_probe_interval": 0.001},
        "upstreams": {"sink": {"address": sink.address}},
        "listeners": [{**mx_listener("mx", "sink"), "address": "127.0.0.1:2525"}],
    }))
    for start in range(5):  # a race, most likely at the first probe: a few starts
        directory = tmp_path / f"metrics{start}"
        directory.mkdir()
        result = subprocess.run(
            [sys.executable, "-c", FORKS_WHILE_PROBING, str(config)], cwd=REPO, capture_output=True, text=True,
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}, timeout=300,
        )
        assert (result.returncode, result.stderr) == (0, "")


def test_idle_connections_to_the_metrics_port_are_bounded(sink, make_proxy):
    proxy = make_proxy(sink.address)
    extra = 8
    held = []
    try:
        for _ in range(MAX_CONNECTIONS + extra):
            held.append(socket.create_connection(("127.0.0.1", proxy.metrics_port), timeout=10))
            held[-1].sendall(b"GET /readyz HTTP/1.1\r\n")  # and headers that never end
        # Those past the bound are closed at once; the others wait for the rest of their
        # request, a byte at a time, well within the timeout of each read.
        closed: set[socket.socket] = set()
        for _ in range(30):
            for connection in set(held) - closed:
                try:
                    connection.sendall(b"X")
                    readable, _, _ = select.select([connection], [], [], 0)
                    if readable and connection.recv(1) == b"":
                        closed.add(connection)
                except OSError:
                    closed.add(connection)
            if len(closed) >= extra:
                break
            time.sleep(1)
        assert len(closed) == extra
    finally:
        for connection in held:
            connection.close()
    assert wait_for_readyz(proxy, lambda answer: True, path="/healthz") == (200, "ok\n")


def test_the_supervisor_removes_its_metrics_directory(sink, make_proxy, tmp_path, monkeypatch):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    proxy = make_proxy(sink.address, proxy={"workers": 2})
    assert len(list(temporary.glob("mailproxy-metrics-*"))) == 1
    assert proxy.stop() == 0
    assert list(temporary.glob("mailproxy-metrics-*")) == []
