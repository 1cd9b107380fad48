"""The route plugin in a real proxy, in front of two real Dovecots: one POP3 and one IMAP
listener, each user's logins sent to the mail store the map file names.

Store one listens on 127.0.0.2, store two on 127.0.0.3; both trust only 127.0.0.5, the
proxy's source address. Every user has one message in store one and two in store two,
so the count a client sees tells which store it reached.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re

import pytest

from tests.support.dovecot import Dovecot

pytestmark = pytest.mark.integration

USERS = {"alice@example.test": "alice-secret", "bob@example.test": "bob-secret"}
STORES = {"one": "127.0.0.2", "two": "127.0.0.3"}
MESSAGE = b"From: carol@example.test\r\nSubject: %d\r\n\r\nbody\r\n"
KEPT = "the last good version stays in use"


@pytest.fixture
def stores():
    """name -> a Dovecot in which each user has as many messages as the store's number."""
    started = {}
    try:
        for number, (name, address) in enumerate(STORES.items(), start=1):
            started[name] = Dovecot(USERS, listen=address, trusted_networks="127.0.0.5/32").start()
            for user in USERS:
                started[name].seed(user, [MESSAGE % n for n in range(number)])
        yield started
    finally:
        for server in started.values():
            server.stop()


def write_map(path, text: str) -> None:
    """Replace the map file as an administrator should: a new file renamed into place."""
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    os.replace(new, path)


@pytest.fixture
def map_file(tmp_path):
    path = tmp_path / "route.map"
    write_map(path, "# bob has moved\nbob@example.test two\n")
    return path


@pytest.fixture
def proxy(stores, map_file, make_proxy):
    upstreams = {
        f"{name}-{protocol}": {
            "address": f"{server.listen}:{getattr(server, f'{protocol}_port')}", "source_address": "127.0.0.5",
            "connect_timeout": 3.0, "reply_timeout": 10.0,
        }
        for name, server in stores.items() for protocol in ("pop3", "imap")
    }
    listener = {"tls": "none", "allow_plaintext_auth": True}
    return make_proxy(
        "127.0.0.1:9",
        upstreams=upstreams,
        listeners=[
            {"name": "pop3", "protocol": "pop3", "upstream": "one-pop3", **listener},
            {"name": "imap", "protocol": "imap", "upstream": "one-imap", **listener},
        ],
        plugins={"enabled": ["access", "route"]},
        plugin={"route": {"map_file": str(map_file), "upstream_name": "{name}-{protocol}"}},
    )


def store_of(proxy, user: str) -> tuple[int, int]:
    """The store `user` reaches through the proxy's POP3 and IMAP listeners, by number."""
    pop3 = poplib.POP3("127.0.0.1", proxy.port("pop3"), timeout=10)
    pop3.user(user)
    pop3.pass_(USERS[user])
    over_pop3 = pop3.stat()[0]
    pop3.quit()
    imap = imaplib.IMAP4("127.0.0.1", proxy.port("imap"), timeout=10)
    imap.login(user, USERS[user])
    status, data = imap.select("INBOX", readonly=True)
    assert status == "OK"
    imap.logout()
    return over_pop3, int(data[0])


def test_each_user_reaches_the_store_of_the_current_map(proxy, stores, map_file):
    assert store_of(proxy, "alice@example.test") == (1, 1)  # no entry: the listener's own
    assert store_of(proxy, "bob@example.test") == (2, 2)
    # Store two saw the real client: the routed upstream's own identity settings apply.
    stores["two"].wait_for_log(re.compile(r"imap-login: Info: Login: user=<bob@example\.test>, .*rip=127\.0\.0\.1, "))

    write_map(map_file, "alice@example.test two\n")
    assert store_of(proxy, "alice@example.test") == (2, 2)
    assert store_of(proxy, "bob@example.test") == (1, 1)

    # A version naming an upstream that does not exist is refused as a whole, once.
    write_map(map_file, "alice@example.test one\nbob@example.test nosuch\n")
    assert store_of(proxy, "alice@example.test") == (2, 2)
    assert store_of(proxy, "bob@example.test") == (1, 1)
    refused = [line for line in proxy.log().splitlines() if KEPT in line]
    assert len(refused) == 1, proxy.log()
    assert f"{map_file}:2: bob@example.test: no upstream named 'nosuch-imap' for imap logins" in refused[0]

    lookups = {result: proxy.metric("mailproxy_plugin_checks_total", plugin="route", check="lookup", result=result)
               for result in ("routed", "default")}
    assert lookups == {"routed": 6, "default": 6}
    assert proxy.metric("mailproxy_plugin_checks_total", plugin="route", check="map_file", result="loaded") == 1
    assert proxy.metric("mailproxy_plugin_checks_total", plugin="route", check="map_file", result="rejected") == 1
