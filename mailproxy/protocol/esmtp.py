"""Which MAIL/RCPT parameters may be used, and which may be forwarded (no I/O).

RFC 5321 3.3 / RFC 1870 and friends: a client may send an ESMTP parameter only if the
server advertised its extension. The proxy checks the client against what it offered
the client, and forwards to the upstream only what the upstream itself advertised.
SIZE is the exception in one direction: the proxy always offers it and enforces its
own limit, so a SIZE the upstream did not ask for is dropped, not refused.
"""

from __future__ import annotations

from .smtp import parse_size

# Parameter -> the EHLO keyword that allows it.
PARAMETER_EXTENSION = {
    "MAIL": {
        "SIZE": "SIZE",
        "BODY": "8BITMIME",
        "SMTPUTF8": "SMTPUTF8",
        "RET": "DSN",
        "ENVID": "DSN",
        "AUTH": "AUTH",
    },
    "RCPT": {
        "NOTIFY": "DSN",
        "ORCPT": "DSN",
    },
}
BODY_VALUES = frozenset({"7BIT", "8BITMIME"})  # BINARYMIME needs CHUNKING, not offered


class UnsupportedParameter(ValueError):
    """A parameter the client was not offered; the text fits a 555 reply. A plain
    ValueError from the checks below is bad syntax (501)."""


def check_client_parameters(verb: str, params: dict[str, str | bool], offered: set[str]) -> None:
    """Raise UnsupportedParameter for a parameter whose extension the client was not
    offered (`offered`: the keywords of the proxy's own EHLO reply to this client)."""
    allowed = PARAMETER_EXTENSION[verb]
    for name, value in params.items():
        extension = allowed.get(name)
        if extension is None or extension not in offered:
            raise UnsupportedParameter(f"Unsupported option: {name}")
        if name == "BODY" and (not isinstance(value, str) or value.upper() not in BODY_VALUES):
            raise UnsupportedParameter(f"Unsupported option: BODY={value}")
        if name == "SIZE" and parse_size(value) is None:
            raise ValueError("Bad message size syntax")  # RFC 1870: a 501


def forwarded_parameters(
    verb: str, params: dict[str, str | bool], upstream_keywords: dict[str, str]
) -> dict[str, str | bool]:
    """The parameters the upstream advertised, in the client's order. The proxy's own
    (SIZE, AUTH) are dropped when the upstream did not ask for them; AUTH= is never
    forwarded: the upstream learns the login from XCLIENT or its own AUTH."""
    allowed = PARAMETER_EXTENSION[verb]
    return {
        name: value
        for name, value in params.items()
        if name != "AUTH" and allowed.get(name) in upstream_keywords
    }


def format_path_command(verb: str, address: str, params: dict[str, str | bool]) -> bytes:
    """`MAIL FROM:<address> PARAMS` / `RCPT TO:<address> PARAMS` as a wire line (no CRLF)."""
    keyword = "FROM" if verb == "MAIL" else "TO"
    words = [f"{verb} {keyword}:<{address}>"]
    words += [name if value is True else f"{name}={value}" for name, value in params.items()]
    return " ".join(words).encode("utf-8", "surrogateescape")
