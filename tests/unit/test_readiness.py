"""What /readyz answers in each state, and the `[metrics]` probe settings."""

import pytest

from mailproxy.config import ConfigError, load_config
from mailproxy.proxy.health import Readiness
from tests.support.configs import MINIMAL_TOML

CONFIG = MINIMAL_TOML


def test_ready_only_while_serving_with_every_watched_upstream_reachable():
    readiness = Readiness()
    readiness.watch("dovecot")
    readiness.watch("postfix")
    assert readiness.answer() == (False, "not ready: starting")
    readiness.serving()
    assert readiness.answer() == (
        False, "not ready: upstream dovecot not probed yet; upstream postfix not probed yet")
    readiness.upstream_probed("dovecot", None)
    readiness.upstream_probed("postfix", "connection refused")
    assert readiness.answer() == (False, "not ready: upstream postfix unreachable (connection refused)")
    readiness.upstream_probed("postfix", None)
    assert readiness.answer() == (True, "ready")


def test_stopping_is_final_whatever_the_upstreams_say():
    readiness = Readiness()
    readiness.serving()
    assert readiness.answer() == (True, "ready")  # no upstream watched: probes are off
    readiness.stopping()
    readiness.serving()
    readiness.upstream_probed("dovecot", None)
    assert readiness.answer() == (False, "not ready: stopping")


def test_probe_settings_default_to_every_15_s_within_2_s(tmp_path):
    path = tmp_path / "mailproxy.toml"
    path.write_text(CONFIG)
    metrics = load_config(path).metrics
    assert (metrics.upstream_probe_interval, metrics.upstream_probe_timeout) == (15.0, 2.0)


@pytest.mark.parametrize(("setting", "problem"), [
    ("upstream_probe_interval = -1", "metrics.upstream_probe_interval: Input should be greater than or equal to 0"),
    ("upstream_probe_timeout = 0", "metrics.upstream_probe_timeout: Input should be greater than 0"),
    ("upstream_probe_interval = inf", "metrics.upstream_probe_interval: Input should be a finite number"),
])
def test_a_bad_probe_setting_is_one_error_naming_file_and_key(tmp_path, setting, problem):
    path = tmp_path / "mailproxy.toml"
    path.write_text(f"[metrics]\n{setting}\n{CONFIG}")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: {problem}"
