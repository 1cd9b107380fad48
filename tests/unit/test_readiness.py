"""What /readyz answers in each state, the `[metrics]` probe settings and
`[proxy] shutdown_delay`."""

import pytest

from mailproxy.config import ConfigError, load_config
from mailproxy.proxy.health import Readiness
from tests.support.configs import MINIMAL_TOML

CONFIG = MINIMAL_TOML


def test_ready_only_while_serving_with_every_watched_upstream_reachable():
    readiness = Readiness({"mx": "postfix", "imap": "dovecot", "submission": "postfix"})
    readiness.watch("dovecot")
    readiness.watch("postfix")
    assert readiness.answer() == (False, "not ready: starting")
    readiness.serving()
    assert readiness.answer() == (
        False, "not ready: upstream postfix not probed yet; upstream dovecot not probed yet")
    readiness.upstream_probed("dovecot", None)
    readiness.upstream_probed("postfix", "connection refused")
    assert readiness.answer() == (False, "not ready: upstream postfix unreachable (connection refused)")
    readiness.upstream_probed("postfix", None)
    assert readiness.answer() == (True, "ready")


def test_stopping_is_final_whatever_the_upstreams_say():
    readiness = Readiness({"mx": "postfix"})
    readiness.serving()
    assert readiness.answer() == (True, "ready")  # no upstream watched: probes are off
    readiness.stopping()
    readiness.serving()
    readiness.upstream_probed("postfix", None)
    assert readiness.answer() == (False, "not ready: stopping")
    assert readiness.answer("mx") == (False, "not ready: stopping")


def test_a_listener_is_ready_when_its_own_upstream_answers():
    readiness = Readiness({"mx": "postfix", "imap": "dovecot"})
    readiness.watch("postfix")
    readiness.watch("dovecot")
    readiness.serving()
    readiness.upstream_probed("postfix", None)
    readiness.upstream_probed("dovecot", "connection refused")
    assert readiness.answer("mx") == (True, "ready")
    assert readiness.answer("imap") == (False, "not ready: upstream dovecot unreachable (connection refused)")
    assert readiness.answer() == (False, "not ready: upstream dovecot unreachable (connection refused)")
    assert (readiness.has_listener("imap"), readiness.has_listener("pop3")) == (True, False)


def test_an_upstream_no_listener_uses_is_probed_but_never_makes_it_unready():
    readiness = Readiness({"mx": "postfix"})
    readiness.watch("postfix")
    readiness.watch("routed")  # picked by the route hook only
    readiness.serving()
    readiness.upstream_probed("postfix", None)
    assert readiness.answer() == (True, "ready")  # before the routed upstream's first probe, too
    readiness.upstream_probed("routed", "connection refused")
    assert readiness.answer() == (True, "ready")
    assert readiness.upstreams_up() == {"postfix": True, "routed": False}


def test_ready_while_at_least_one_worker_serves():
    readiness = Readiness({"mx": "postfix"})
    readiness.serving(101)
    readiness.serving(102)
    readiness.worker_gone(101)
    assert readiness.answer() == (True, "ready")
    readiness.worker_gone(102)
    assert readiness.answer() == (False, "not ready: starting")
    readiness.serving(103)  # its replacement
    assert readiness.answer() == (True, "ready")


def test_probe_settings_default_to_every_15_s_within_2_s(tmp_path):
    path = tmp_path / "mailproxy.toml"
    path.write_text(CONFIG)
    metrics = load_config(path).metrics
    assert (metrics.upstream_probe_interval, metrics.upstream_probe_timeout) == (15.0, 2.0)


def test_shutdown_delay_defaults_to_no_delay(tmp_path):
    path = tmp_path / "mailproxy.toml"
    path.write_text(CONFIG)
    assert load_config(path).proxy.shutdown_delay == 0.0


@pytest.mark.parametrize(("section", "setting", "problem"), [
    ("metrics", "upstream_probe_interval = -1",
     "metrics.upstream_probe_interval: Input should be greater than or equal to 0"),
    ("metrics", "upstream_probe_timeout = 0", "metrics.upstream_probe_timeout: Input should be greater than 0"),
    ("metrics", "upstream_probe_interval = inf", "metrics.upstream_probe_interval: Input should be a finite number"),
    ("proxy", "shutdown_delay = -1", "proxy.shutdown_delay: Input should be greater than or equal to 0"),
    ("proxy", "shutdown_delay = inf", "proxy.shutdown_delay: Input should be a finite number"),
    ("proxy", 'shutdown_delay = "soon"', "proxy.shutdown_delay: Input should be a valid number"),
])
def test_a_bad_readiness_setting_is_one_error_naming_file_and_key(tmp_path, section, setting, problem):
    path = tmp_path / "mailproxy.toml"
    path.write_text(f"[{section}]\n{setting}\n{CONFIG}")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: {problem}"
