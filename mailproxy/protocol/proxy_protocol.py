"""PROXY protocol version 2 headers, as a proxy sends them to tell a server who its
client is (HAProxy's proxy-protocol.txt, section 2.2). Bytes out only, no I/O.

The header goes first on the connection, before TLS. Dovecot reads it on a listener
with `haproxy = yes` from `haproxy_trusted_networks`; the PP2_TYPE_SSL TLV tells it
that the client's own connection is TLS, without which it treats the session as
plaintext (and refuses a plaintext login where `disable_plaintext_auth` is set).
"""

from __future__ import annotations

import ipaddress
import struct

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
VERSION_2_PROXY = 0x21  # version 2 (high nibble), command PROXY (low nibble)
TCP_OVER_IPV4 = 0x11  # AF_INET (high nibble), STREAM (low nibble)
TCP_OVER_IPV6 = 0x21  # AF_INET6, STREAM
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_CLIENT_SSL = 0x01

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def proxy_v2_header(
    source: tuple[str, int], destination: tuple[str, int], tls: bool = False, tls_version: str | None = None,
) -> bytes:
    """The header for a TCP connection from `source` (the client's address and port)
    to `destination` (the address and port the client connected to).

    With `tls`, a PP2_TYPE_SSL TLV says the client's connection is TLS, with the TLS
    version (e.g. "TLSv1.3") in a PP2_SUBTYPE_SSL_VERSION sub-TLV when it is known.
    Its verify field is 0, as HAProxy sends it when the client gave no certificate.
    Without `tls` there is no such TLV: nothing is claimed about the client's channel.
    """
    client, server = _address(source[0]), _address(destination[0])
    if client.version == server.version == 4:
        family = TCP_OVER_IPV4
    else:
        # One of each (not seen on one socket, whose two ends share a family): as
        # HAProxy does, the IPv4 one goes as an IPv4-mapped IPv6 address.
        family = TCP_OVER_IPV6
        client, server = _as_ipv6(client), _as_ipv6(server)
    payload = client.packed + server.packed + struct.pack("!HH", source[1], destination[1])
    if tls:
        ssl_value = struct.pack("!BI", PP2_CLIENT_SSL, 0)
        if tls_version:
            ssl_value += _tlv(PP2_SUBTYPE_SSL_VERSION, tls_version.encode("ascii"))
        payload += _tlv(PP2_TYPE_SSL, ssl_value)
    return SIGNATURE + bytes([VERSION_2_PROXY, family]) + struct.pack("!H", len(payload)) + payload


def _address(text: str) -> IPAddress:
    """The address as it is on the wire: an IPv4 client of a dual-stack socket shows as
    ::ffff:a.b.c.d there, and is the IPv4 address a.b.c.d to the server."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _as_ipv6(address: IPAddress) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + address.packed)


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value
