"""Start, stop and several worker processes."""

import signal
import smtplib
import socket
import subprocess
import sys

import pytest

from tests.support.clients import connect
from tests.support.configs import base_config
from tests.support.proxy import to_toml
from tests.support.servers import wait_until_refused

pytestmark = pytest.mark.integration


def test_sigterm_lets_an_open_session_finish_then_exits_cleanly(sink, make_proxy):
    # A grace period no loaded machine runs out of: what is under test is that the
    # listener closes at once while the open session may still finish.
    proxy = make_proxy(sink.address, proxy={"shutdown_grace": 60.0})
    client = connect(proxy)
    client.ehlo("client.test")
    client.mail("a@sender.example")
    proxy.process.send_signal(signal.SIGTERM)
    # Not accepting any more, once the signal is handled ...
    wait_until_refused(proxy.port("mx"))
    # ... but the open session finishes its message within the grace period.
    client.rcpt("user@example.test")
    assert client.data(b"Subject: late\r\n\r\nok\r\n")[0] == 250
    client.quit()
    assert proxy.process.wait(30) == 0  # the last session ended: no need to wait out the grace
    assert sink.bodies(expected=1) == [b"Subject: late\n\nok\n"]


def test_sessions_left_open_are_closed_after_the_grace_period(proxy):
    client = connect(proxy)
    client.ehlo("client.test")
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(30) == 0  # an idle client cannot keep the proxy running
    assert "closing 1 session(s) still open after 2.0s" in proxy.log()  # grace is 2 s in the tests
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()


def test_two_workers_share_the_port_and_the_metrics_add_up(sink, make_proxy):
    proxy = make_proxy(sink.address, proxy={"hostname": "proxy.test", "workers": 2})
    for n in range(12):
        with connect(proxy) as client:
            client.sendmail("a@sender.example", ["user@example.test"], b"Subject: %d\r\n\r\nok\r\n" % n)
    assert len(sink.bodies(expected=12)) == 12
    assert proxy.settled_metric("mailproxy_messages_total", 12, outcome="delivered") == 12
    assert proxy.metric("mailproxy_connections_total") == 12
    workers = {line.split("pid ")[1] for line in proxy.log().splitlines() if "worker" in line and "started" in line}
    assert len(workers) == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_is_one_clear_error(sink, certs, users_file, tmp_path, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = base_config(sink.address, certs, users_file, proxy={"hostname": "proxy.test", "workers": workers})
        config["listeners"] = [{**config["listeners"][0], "address": f"127.0.0.1:{port}"}]
        path = tmp_path / "mailproxy.toml"
        path.write_text(to_toml(config))
        result = subprocess.run(
            [sys.executable, "-m", "mailproxy.cli", "run", "-c", str(path)],
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 2
    assert f"listener mx: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
