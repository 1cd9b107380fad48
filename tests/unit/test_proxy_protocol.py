"""PROXY protocol v2 headers, byte for byte against HAProxy's proxy-protocol.txt
(section 2.2), and `client_identity = "proxy"` in the configuration."""

from __future__ import annotations

import pytest

from mailproxy.config import ConfigError, load_config
from mailproxy.protocol.proxy_protocol import proxy_v2_header
from tests.support.mailstore_clients import proxy_v2_header as harness_header

# Section 2.2: the 12-byte signature, then version 2 and command PROXY in one byte (0x21).
SIGNATURE = bytes.fromhex("0d0a0d0a000d0a515549540a")
V2_PROXY = b"\x21"
# Then the family (high nibble: 1 AF_INET, 2 AF_INET6) and transport (low: 1 STREAM).
TCP4, TCP6 = b"\x11", b"\x21"
# PP2_TYPE_SSL with PP2_CLIENT_SSL and verify 0: type 0x20, length 5, client, verify.
SSL_TLV = bytes.fromhex("20" "0005" "01" "00000000")


def hexbytes(spaced: str) -> bytes:
    return bytes.fromhex(spaced.replace(" ", ""))


@pytest.mark.parametrize("source, destination, tls, tls_version, expected", [
    pytest.param(
        ("192.0.2.10", 40001), ("127.0.0.1", 993), False, None,
        # length 12: src addr, dst addr (4 each), src port, dst port (2 each)
        SIGNATURE + V2_PROXY + TCP4 + hexbytes("000c c000020a 7f000001 9c41 03e1"),
        id="ipv4",
    ),
    pytest.param(
        ("2001:db8::7", 1), ("::1", 65535), False, None,
        # length 36: two 16-byte addresses, two ports
        SIGNATURE + V2_PROXY + TCP6 + hexbytes(
            "0024 20010db8000000000000000000000007 00000000000000000000000000000001 0001 ffff"),
        id="ipv6",
    ),
    pytest.param(
        ("::ffff:192.0.2.10", 40001), ("::ffff:127.0.0.1", 993), False, None,
        # a dual-stack socket's IPv4 client: sent as the IPv4 addresses they are
        SIGNATURE + V2_PROXY + TCP4 + hexbytes("000c c000020a 7f000001 9c41 03e1"),
        id="ipv4-mapped",
    ),
    pytest.param(
        ("192.0.2.10", 40001), ("2001:db8::1", 143), False, None,
        # one of each family (as HAProxy sends it): TCP6, the IPv4 one mapped
        SIGNATURE + V2_PROXY + TCP6 + hexbytes(
            "0024 00000000000000000000ffffc000020a 20010db8000000000000000000000001 9c41 008f"),
        id="mixed-families",
    ),
    pytest.param(
        ("192.0.2.10", 40001), ("127.0.0.1", 993), True, None,
        # 12 + the SSL TLV's 3 + 5
        SIGNATURE + V2_PROXY + TCP4 + hexbytes("0014 c000020a 7f000001 9c41 03e1") + SSL_TLV,
        id="ipv4-tls",
    ),
    pytest.param(
        ("192.0.2.10", 40001), ("127.0.0.1", 993), True, "TLSv1.3",
        # the SSL TLV holds client, verify and a PP2_SUBTYPE_SSL_VERSION (0x21) sub-TLV:
        # 5 + 3 + 7 = 15; the header's length is 12 + 3 + 15 = 30
        SIGNATURE + V2_PROXY + TCP4 + hexbytes("001e c000020a 7f000001 9c41 03e1")
        + hexbytes("20 000f 01 00000000 21 0007") + b"TLSv1.3",
        id="ipv4-tls-version",
    ),
    pytest.param(
        ("2001:db8::7", 1), ("::1", 65535), True, None,
        # 36 + 8 = 44
        SIGNATURE + V2_PROXY + TCP6 + hexbytes(
            "002c 20010db8000000000000000000000007 00000000000000000000000000000001 0001 ffff") + SSL_TLV,
        id="ipv6-tls",
    ),
    pytest.param(
        ("192.0.2.10", 40001), ("127.0.0.1", 993), False, "TLSv1.3",
        # a plaintext client: no SSL TLV, whatever else is known
        SIGNATURE + V2_PROXY + TCP4 + hexbytes("000c c000020a 7f000001 9c41 03e1"),
        id="plaintext-claims-nothing",
    ),
])
def test_header_bytes(source, destination, tls, tls_version, expected):
    assert proxy_v2_header(source, destination, tls=tls, tls_version=tls_version) == expected


@pytest.mark.parametrize("source, destination", [
    (("198.51.100.7", 40001), ("127.0.0.2", 143)),
    (("2001:db8::1", 1), ("::1", 2)),
])
@pytest.mark.parametrize("tls", [False, True])
def test_the_same_bytes_as_the_header_dovecot_takes_in_the_harness_tests(source, destination, tls):
    # tests/support/mailstore_clients.proxy_v2_header is what the Dovecot harness
    # tests send to its haproxy listeners (and see accepted, secured with the TLV).
    assert proxy_v2_header(source, destination, tls=tls) == harness_header(source, destination, ssl=tls)


def test_length_field_counts_what_follows_it():
    header = proxy_v2_header(("::ffff:10.0.0.1", 2), ("10.0.0.2", 3), tls=True, tls_version="TLSv1.2")
    assert int.from_bytes(header[14:16], "big") == len(header) - 16


def test_a_non_address_is_refused():
    with pytest.raises(ValueError):
        proxy_v2_header(("client.example", 1), ("127.0.0.1", 2))


# --- the setting -----------------------------------------------------------------------------

LISTENER = """
[upstreams.store]
address = "127.0.0.1:1143"
client_identity = "proxy"

[[listeners]]
name = "{protocol}"
protocol = "{protocol}"
address = "127.0.0.1:2143"
upstream = "store"
"""


@pytest.mark.parametrize("protocol", ["pop3", "imap"])
def test_proxy_identity_is_for_pop3_and_imap(tmp_path, protocol):
    path = tmp_path / "mailproxy.toml"
    path.write_text(LISTENER.format(protocol=protocol))
    assert load_config(path).upstreams["store"].identity_for(protocol) == "proxy"


def test_proxy_identity_is_refused_for_smtp(tmp_path):
    path = tmp_path / "mailproxy.toml"
    path.write_text(LISTENER.format(protocol="smtp") + 'mode = "submission"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value) == f"{path}: upstreams.store.client_identity: 'proxy' is not for smtp listeners"
