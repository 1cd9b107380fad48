"""Decoding the SASL PLAIN and LOGIN exchanges (RFC 4616, and the LOGIN convention)."""

from __future__ import annotations

import base64
import binascii

MECHANISMS = ("PLAIN", "LOGIN")
# "Username:" and "Password:" in base64, as every LOGIN client expects.
LOGIN_USER_CHALLENGE = "VXNlcm5hbWU6"
LOGIN_PASSWORD_CHALLENGE = "UGFzc3dvcmQ6"


class SaslError(ValueError):
    """The client's response could not be decoded; the text fits a 501 reply."""


def decode_response(blob: str) -> str:
    """A base64 client response as text. '=' is the empty response (RFC 4954)."""
    if blob == "=":
        return ""
    try:
        return base64.b64decode(blob.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise SaslError("Invalid base64 data") from None


def parse_plain(response: str) -> tuple[str, str]:
    """[authzid] NUL authcid NUL passwd -> (username, password)."""
    parts = response.split("\0")
    if len(parts) != 3 or not parts[1]:
        raise SaslError("Malformed PLAIN response")
    authzid, username, password = parts
    if authzid and authzid != username:
        raise SaslError("Authorization identity must match the login")
    return username, password
