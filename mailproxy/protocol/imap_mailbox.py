"""Mailbox names in modified UTF-7 (RFC 3501 §5.1.3), which Python has no codec for.

Printable ASCII stands for itself, but `&`, which is `&-`. Anything else is a run of
UTF-16BE in base64 with `,` for `/`, no padding, between `&` and `-`: `Entw&APw-rfe` is
`Entwürfe`. A name that breaks these rules is no name in that encoding, and is kept as
it is. Like Dovecot, decoding refuses what a name must never hold encoded: printable
ASCII (which `&AFQ-rash` would smuggle in as `Trash`), NUL and lone surrogates.
(After `ENABLE UTF8=ACCEPT`, RFC 6855, names are plain UTF-8 and need none of this.)
"""

from __future__ import annotations

import base64
import binascii
import re

_SHIFTED = re.compile(r"&([^-]*)-")  # split() gives direct text and base64, alternately
_DIRECT = re.compile(r"[ -%'-~]*")  # printable ASCII but "&"
_BASE64 = re.compile(r"[A-Za-z0-9+,]*")
_NOT_DIRECT = re.compile(r"[^ -~]+")


def decode_mailbox_name(name: str) -> str:
    parts = _SHIFTED.split(name)
    if not all(_DIRECT.fullmatch(direct) for direct in parts[::2]):
        return name
    decoded = [_decode_run(run) for run in parts[1::2]]
    if None in decoded:
        return name
    parts[1::2] = decoded
    return "".join(parts)


def encode_mailbox_name(text: str) -> str:
    return _NOT_DIRECT.sub(_encode_run, text.replace("&", "&-"))


def _decode_run(run: str) -> str | None:
    if not run:
        return "&"
    if not _BASE64.fullmatch(run):
        return None
    try:
        utf16 = base64.b64decode(run.replace(",", "/") + "=" * (-len(run) % 4), validate=True)
        text = utf16.decode("utf-16-be")  # strict: an odd byte or a lone surrogate fails
    except (binascii.Error, UnicodeDecodeError):
        return None
    return None if _NOT_DIRECT.fullmatch(text) is None or "\0" in text else text


def _encode_run(match: re.Match[str]) -> str:
    utf16 = match.group().encode("utf-16-be")
    return "&" + base64.b64encode(utf16).decode().rstrip("=").replace("/", ",") + "-"
