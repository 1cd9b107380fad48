"""load_config: good configurations load; every problem is one `FILE: key: problem` line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mailproxy.config import ConfigError, Endpoint, load_config

REPO = Path(__file__).resolve().parents[2]

UPSTREAM = """
[upstreams.local]
address = "127.0.0.1:2526"
"""

MX = """
[[listeners]]
name = "mx"
mode = "mx"
address = "127.0.0.1:2525"
upstream = "local"
local_domains = ["Example.TEST."]
"""

MINIMAL = UPSTREAM + MX


def write(tmp_path: Path, text: str, name: str = "mailproxy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "Traceback" not in text
    # load_config raises "from None": no chained exception to print a traceback for.
    assert info.value.__cause__ is None and info.value.__suppress_context__
    return text


# --- good configurations ----------------------------------------------------------------


def test_minimal_config_loads_with_defaults(tmp_path):
    path = write(tmp_path, MINIMAL)
    config = load_config(path)
    assert config.path == path
    assert list(config.upstreams) == ["local"]
    upstream = config.upstreams["local"]
    assert upstream.address == Endpoint("127.0.0.1", 2526)
    assert (upstream.tls, upstream.verify, upstream.client_identity) == ("none", True, "auto")
    assert upstream.identity_for("smtp") == upstream.identity_for("pop3") == "xclient"
    [listener] = config.listeners
    assert listener.address == Endpoint("127.0.0.1", 2525)
    assert str(listener.address) == "127.0.0.1:2525"
    assert (listener.protocol, listener.mode, listener.tls) == ("smtp", "mx", "none")
    assert listener.local_domains == ["example.test"]  # lower-cased, trailing dot dropped
    assert listener.max_message_size == 10 * 1024 * 1024
    assert listener.max_recipients == 100
    assert config.upstream_for(listener) is upstream
    assert config.auth.backends == []
    assert config.plugins.enabled == [] and config.plugin == {}
    assert (config.policy.reject_score, config.policy.tempfail_score) == (None, None)
    assert config.proxy.workers == 1
    assert config.metrics.listen is None


def test_tls_files_are_resolved_against_the_config_directory(tmp_path, cert_pair, monkeypatch):
    confdir = tmp_path / "etc"
    confdir.mkdir()
    path = write(
        confdir,
        MINIMAL + 'tls = "starttls"\ncert_file = "../cert.pem"\nkey_file = "../key.pem"\n',
    )
    monkeypatch.chdir(REPO)  # the working directory must not matter
    [listener] = load_config(path).listeners
    assert listener.tls == "starttls"
    assert listener.cert_file.resolve() == cert_pair[0].resolve()
    assert listener.key_file.resolve() == cert_pair[1].resolve()


def test_ipv6_listen_address_and_hostname_upstream(tmp_path):
    path = write(
        tmp_path,
        MINIMAL.replace('"127.0.0.1:2525"', '"[::1]:2525"').replace(
            '"127.0.0.1:2526"', '"mail.example.test:25"'
        )
        + '[metrics]\nlisten = "127.0.0.1:9325"\n',
    )
    config = load_config(path)
    assert config.listeners[0].address == Endpoint("::1", 2525)
    assert str(config.listeners[0].address) == "[::1]:2525"
    assert config.upstreams["local"].address == Endpoint("mail.example.test", 25)
    assert config.metrics.listen == Endpoint("127.0.0.1", 9325)


def test_auth_users_file_and_plugin_sections(tmp_path):
    (tmp_path / "users").write_text("")
    path = write(
        tmp_path,
        '[auth]\nbackends = ["file"]\nusers_file = "users"\n'
        + MINIMAL
        + '[plugins]\nenabled = ["access", "local_rules"]\n'
        + '[plugin.access]\ndeny_senders = ["*@spam.example"]\n'
        + "[policy]\nreject_score = 10\ntempfail_score = 5.5\n",
    )
    config = load_config(path)
    assert config.auth.backends == ["file"]
    assert config.auth.users_file == tmp_path.resolve() / "users"
    assert config.plugins.enabled == ["access", "local_rules"]
    assert config.plugin == {"access": {"deny_senders": ["*@spam.example"]}}
    assert (config.policy.reject_score, config.policy.tempfail_score) == (10.0, 5.5)


def test_example_config_loads(tmp_path, cert_pair):
    """config/mailproxy.toml as shipped, with the demo certificate it points at in place."""
    confdir = tmp_path / "config"
    confdir.mkdir()
    shutil.copy(REPO / "config" / "mailproxy.toml", confdir)
    shutil.copy(REPO / "config" / "users.example", confdir)
    tlsdir = tmp_path / "var" / "demo-tls"
    tlsdir.mkdir(parents=True)
    shutil.copy(cert_pair[0], tlsdir / "cert.pem")
    shutil.copy(cert_pair[1], tlsdir / "key.pem")

    config = load_config(confdir / "mailproxy.toml")
    assert config.proxy.hostname == "mailproxy.localdomain"
    assert config.metrics.listen == Endpoint("127.0.0.1", 9325)
    assert config.auth.backends == ["file"]
    assert config.auth.users_file.resolve() == (confdir / "users.example").resolve()
    assert config.upstreams["local"].address == Endpoint("127.0.0.1", 2526)
    assert [(l.name, l.mode, str(l.address), l.tls, l.upstream) for l in config.listeners] == [
        ("mx", "mx", "127.0.0.1:2525", "starttls", "local"),
        ("submission", "submission", "127.0.0.1:2587", "starttls", "local"),
    ]
    for listener in config.listeners:
        assert listener.cert_file.resolve() == (tlsdir / "cert.pem").resolve()
        assert listener.key_file.resolve() == (tlsdir / "key.pem").resolve()
    assert config.listeners[0].local_domains == ["example.test"]
    assert (config.listeners[0].max_message_size, config.listeners[0].max_recipients) == (10485760, 100)
    assert config.plugins.enabled == ["access"]
    assert config.plugin["access"]["deny_clients"] == ["192.0.2.0/24"]


def test_example_config_before_the_demo_certificate_exists(tmp_path):
    """config/ as shipped, in a checkout where `make run` has not yet made the demo
    certificate: the only complaints are the four certificate paths. (With them in
    place it loads: test_example_config_loads.)"""
    confdir = tmp_path / "config"
    shutil.copytree(REPO / "config", confdir)
    path = confdir / "mailproxy.toml"
    tls = confdir / ".." / "var" / "demo-tls"
    expected = [
        f"{path}: listeners[{index}].{key}: file not found: {tls / name}"
        for index in (0, 1)
        for key, name in (("cert_file", "cert.pem"), ("key_file", "key.pem"))
    ]
    assert error_of(path) == "\n".join(expected)


# --- errors -----------------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, "bogus = 1\n" + MINIMAL)
    assert error_of(path) == f"{path}: bogus: unknown key"


def test_unknown_key_in_listener(tmp_path):
    path = write(tmp_path, MINIMAL + "bogus = 2\n")
    assert error_of(path) == f"{path}: listeners[0].bogus: unknown key"


def test_unknown_key_in_upstream_names_the_upstream(tmp_path):
    path = write(tmp_path, UPSTREAM + "tsl = 'none'\n" + MX)
    assert error_of(path) == f"{path}: upstreams.local.tsl: unknown key"


def test_wrong_type(tmp_path):
    path = write(tmp_path, MINIMAL + 'max_recipients = "many"\n')
    assert error_of(path) == f"{path}: listeners[0].max_recipients: Input should be a valid integer"


@pytest.mark.parametrize("line, key, problem", [
    ("workers = true", "proxy.workers", "Input should be a valid integer"),
    ('workers = "2"', "proxy.workers", "Input should be a valid integer"),
    ('shutdown_grace = "10"', "proxy.shutdown_grace", "Input should be a valid number"),
])
def test_no_silent_type_conversion(tmp_path, line, key, problem):
    path = write(tmp_path, f"[proxy]\n{line}\n" + MINIMAL)
    assert error_of(path) == f"{path}: {key}: {problem}"


def test_wrong_type_for_a_list(tmp_path):
    path = write(tmp_path, MINIMAL.replace('["Example.TEST."]', '"example.test"'))
    assert error_of(path) == f"{path}: listeners[0].local_domains: Input should be a valid list"


def test_wrong_literal(tmp_path):
    path = write(tmp_path, MINIMAL + 'tls = "ssl"\n')
    assert error_of(path) == (
        f"{path}: listeners[0].tls: Input should be 'none', 'starttls' or 'implicit'"
    )


def test_listen_address_must_be_an_ip(tmp_path):
    path = write(tmp_path, MINIMAL.replace('"127.0.0.1:2525"', '"localhost:2525"'))
    assert error_of(path) == (
        f"{path}: listeners[0].address: 'localhost' is not an IP address to listen on"
    )


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:", "127.0.0.1", "127.0.0.1:smtp"])
def test_listen_address_bad_port(tmp_path, address):
    path = write(tmp_path, MINIMAL.replace('"127.0.0.1:2525"', f'"{address}"'))
    assert error_of(path) == (
        f"{path}: listeners[0].address: {address!r} is not HOST:PORT "
        "(IPv6 as [addr]:port, port 1-65535)"
    )


def test_listen_address_not_a_string(tmp_path):
    path = write(tmp_path, MINIMAL.replace('"127.0.0.1:2525"', "2525"))
    assert error_of(path) == (
        f"{path}: listeners[0].address: must be a string like 127.0.0.1:25 or [::1]:25"
    )


def test_metrics_listen_must_be_an_ip(tmp_path):
    path = write(tmp_path, '[metrics]\nlisten = "localhost:9325"\n' + MINIMAL)
    assert error_of(path) == f"{path}: metrics.listen: 'localhost' is not an IP address to listen on"


def test_missing_certificate_file(tmp_path, cert_pair):
    path = write(
        tmp_path, MINIMAL + 'tls = "starttls"\ncert_file = "nope.pem"\nkey_file = "key.pem"\n'
    )
    assert error_of(path) == (
        f"{path}: listeners[0].cert_file: file not found: {tmp_path.resolve() / 'nope.pem'}"
    )


def test_starttls_without_certificate(tmp_path):
    path = write(tmp_path, MINIMAL + 'tls = "starttls"\n')
    assert error_of(path) == f"{path}: listeners[0]: tls = 'starttls' needs cert_file and key_file"


def test_implicit_tls_without_key(tmp_path, cert_pair):
    path = write(tmp_path, MINIMAL + 'tls = "implicit"\ncert_file = "cert.pem"\n')
    assert error_of(path) == f"{path}: listeners[0]: tls = 'implicit' needs cert_file and key_file"


def test_upstream_that_does_not_exist(tmp_path):
    path = write(tmp_path, MINIMAL.replace('upstream = "local"', 'upstream = "elsewhere"'))
    assert error_of(path) == (
        f"{path}: listeners[0].upstream: no upstream named 'elsewhere' (local)"
    )


def test_mx_listener_without_local_domains(tmp_path):
    path = write(tmp_path, MINIMAL.replace('local_domains = ["Example.TEST."]', ""))
    assert error_of(path) == (
        f"{path}: listeners[0]: an mx listener needs local_domains (it refuses relaying)"
    )


def test_missing_required_sections(tmp_path):
    path = write(tmp_path, "[proxy]\nworkers = 2\n")
    assert error_of(path) == (
        f"{path}: upstreams: required key is missing\n{path}: listeners: required key is missing"
    )


def test_invalid_toml(tmp_path):
    path = write(tmp_path, MINIMAL + "x = [\n")
    assert error_of(path) == f"{path}: not valid TOML: Invalid value (at end of document)"


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    assert error_of(path) == f"{path}: file not found"


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n" + MINIMAL.encode())
    assert error_of(path).startswith(f"{path}: cannot read: 'utf-8' codec can't decode byte 0xe9")


def test_plugin_section_for_plugin_not_enabled(tmp_path):
    path = write(tmp_path, MINIMAL + '[plugins]\nenabled = ["local_rules"]\n[plugin.access]\nobserve = true\n')
    assert error_of(path) == f"{path}: plugin.access: section for a plugin that is not enabled"


def test_plugin_enabled_twice(tmp_path):
    path = write(tmp_path, MINIMAL + '[plugins]\nenabled = ["local_rules", "access", "local_rules"]\n')
    assert error_of(path) == f"{path}: plugins.enabled: listed twice: local_rules"


def test_plugin_directory_must_exist(tmp_path):
    path = write(tmp_path, MINIMAL + '[plugins]\ndirectories = ["plugins.d"]\n')
    assert error_of(path) == (
        f"{path}: plugins.directories: directory not found: {tmp_path.resolve() / 'plugins.d'}"
    )


def test_file_backend_needs_users_file(tmp_path):
    path = write(tmp_path, '[auth]\nbackends = ["file"]\n' + MINIMAL)
    assert error_of(path) == f"{path}: auth: backend 'file' needs users_file"


def test_unknown_auth_backend(tmp_path):
    path = write(tmp_path, '[auth]\nbackends = ["ldap"]\n' + MINIMAL)
    assert error_of(path) == f"{path}: auth.backends[0]: Input should be 'file' or 'upstream'"


SECOND = """
[[listeners]]
name = "{name}"
mode = "submission"
address = "{address}"
upstream = "local"
"""


def test_duplicate_listener_address(tmp_path):
    path = write(tmp_path, MINIMAL + SECOND.format(name="sub", address="127.0.0.1:2525"))
    assert error_of(path) == f"{path}: listeners[1].address: 127.0.0.1:2525 is used twice"


def test_duplicate_listener_address_spelled_differently(tmp_path):
    # The same IPv6 address in two spellings would only fail later, at bind time.
    text = MINIMAL.replace('"127.0.0.1:2525"', '"[::1]:2525"')
    path = write(tmp_path, text + SECOND.format(name="sub", address="[0:0::1]:2525"))
    assert error_of(path) == f"{path}: listeners[1].address: [::1]:2525 is used twice"


def test_duplicate_listener_name(tmp_path):
    path = write(tmp_path, MINIMAL + SECOND.format(name="mx", address="127.0.0.1:2587"))
    assert error_of(path) == f"{path}: listeners[1].name: 'mx' is used twice"


def test_several_problems_are_all_reported(tmp_path):
    path = write(tmp_path, "bogus = 1\n[proxy]\nworkers = 0\n" + MINIMAL + "extra = true\n")
    assert error_of(path).splitlines() == [
        f"{path}: proxy.workers: Input should be greater than or equal to 1",
        f"{path}: listeners[0].extra: unknown key",
        f"{path}: bogus: unknown key",
    ]


def test_dns_servers_take_a_bare_address_or_a_port(tmp_path):
    path = write(tmp_path, '[dns]\nservers = ["192.0.2.53", "[2001:db8::53]:5353", "127.0.0.1:5300"]\n' + MINIMAL)
    servers = load_config(path).dns.servers
    assert [str(s) for s in servers] == ["192.0.2.53:53", "[2001:db8::53]:5353", "127.0.0.1:5300"]


def test_dns_server_must_be_an_address(tmp_path):
    path = write(tmp_path, '[dns]\nservers = ["ns.example"]\n' + MINIMAL)
    assert error_of(path).startswith(f"{path}: dns.servers[0]: ")


def test_client_names_are_resolved_by_default():
    # Without a verified name the upstream is told NAME=[UNAVAILABLE], and Postfix's
    # reject_unknown_client_hostname would refuse every client behind the proxy.
    from mailproxy.config import ProxySettings

    assert ProxySettings().resolve_client_names is True


# --- mail store listeners ---------------------------------------------------------------

POP3 = """
[[listeners]]
name = "pop3"
protocol = "pop3"
address = "127.0.0.1:1110"
upstream = "local"
"""


def test_pop3_listener_has_no_mode_and_a_longer_idle_timeout(tmp_path):
    config = load_config(write(tmp_path, UPSTREAM + POP3))
    [listener] = config.listeners
    assert (listener.protocol, listener.mode, listener.kind) == ("pop3", None, "pop3")
    assert listener.idle_timeout == 600.0  # RFC 1939: at least 10 minutes
    explicit = load_config(write(tmp_path, UPSTREAM + POP3 + "idle_timeout = 120.0\n"))
    assert explicit.listeners[0].idle_timeout == 120.0


def test_smtp_listener_needs_a_mode(tmp_path):
    text = MX.replace('mode = "mx"\n', "")
    assert error_of(write(tmp_path, UPSTREAM + text)).endswith(
        'listeners[0]: an smtp listener needs mode ("mx" or "submission")'
    )


@pytest.mark.parametrize("line, key", [('mode = "mx"', "mode"), ('local_domains = ["a.test"]', "local_domains")])
def test_smtp_keys_on_a_pop3_listener(tmp_path, line, key):
    assert error_of(write(tmp_path, UPSTREAM + POP3 + line + "\n")).endswith(
        f"listeners[0]: {key} is for smtp listeners, not pop3"
    )


def test_a_pop3_upstream_takes_no_service_credential(tmp_path):
    upstream = UPSTREAM + 'username = "svc"\npassword = "secret"\n'
    assert error_of(write(tmp_path, upstream + POP3)).endswith(
        "upstreams.local.username: a pop3 upstream logs in as each user, with a service credential only for smtp"
    )


def test_source_address_must_be_an_ip(tmp_path):
    path = write(tmp_path, UPSTREAM + 'source_address = "proxy.example"\n' + MX)
    assert error_of(path) == f"{path}: upstreams.local.source_address: 'proxy.example' is not an IP address"


def test_client_identity_must_suit_the_protocol(tmp_path):
    path = write(tmp_path, UPSTREAM + 'client_identity = "id"\n' + POP3)
    assert error_of(path) == f"{path}: upstreams.local.client_identity: 'id' is not for pop3 listeners"


def test_imap_listener_defaults_to_the_rfc_idle_timeout_and_id(tmp_path):
    config = load_config(write(tmp_path, UPSTREAM + POP3.replace('"pop3"', '"imap"')))
    assert config.listeners[0].idle_timeout == 1800.0  # RFC 9051 5.4: at least 30 minutes
    assert config.upstreams["local"].identity_for("imap") == "id"
    path = write(tmp_path, UPSTREAM + 'client_identity = "xclient"\n' + POP3.replace('"pop3"', '"imap"'))
    assert error_of(path) == f"{path}: upstreams.local.client_identity: 'xclient' is not for imap listeners"


def test_after_login_is_for_mail_store_listeners(tmp_path):
    config = load_config(write(tmp_path, UPSTREAM + POP3 + 'after_login = "pipe"\n'))
    assert config.listeners[0].after_login == "pipe"
    path = write(tmp_path, MINIMAL + 'after_login = "pipe"\n')
    assert error_of(path) == f"{path}: listeners[0]: after_login is for pop3 and imap listeners"


@pytest.mark.parametrize(("text", "key"), [
    ("[proxy]\nshutdown_grace = inf\n" + MINIMAL, "proxy.shutdown_grace"),
    ("[auth]\nfailure_window = inf\n" + MINIMAL, "auth.failure_window"),
    (UPSTREAM + "reply_timeout = inf\n" + MX, "upstreams.local.reply_timeout"),
    (UPSTREAM + "data_timeout = nan\n" + MX, "upstreams.local.data_timeout"),
    (UPSTREAM + MX + "idle_timeout = inf\n", "listeners[0].idle_timeout"),
    (UPSTREAM + MX + "login_timeout = inf\n", "listeners[0].login_timeout"),
])
def test_a_duration_must_be_a_finite_number(tmp_path, text, key):
    # inf as "no timeout" would reach time arithmetic and sleeps that cannot take it.
    assert error_of(write(tmp_path, text)).endswith(f": {key}: Input should be a finite number")
