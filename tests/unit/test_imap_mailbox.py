"""Mailbox names in modified UTF-7 (RFC 3501 §5.1.3): tables both ways, what is no such
name (kept as it is), and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailproxy.protocol.imap_mailbox import decode_mailbox_name, encode_mailbox_name

# (on the wire, as text); each is read and written exactly so
NAMES = [
    ("INBOX", "INBOX"),
    ("", ""),
    ("Entw&APw-rfe", "Entwürfe"),
    ("&-", "&"),
    ("R&-D", "R&D"),
    ("&AOQA9gD8-", "äöü"),
    ("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"),  # RFC 3501's example
    ("&2D3eAA-", "\U0001f600"),  # a surrogate pair
    ("Sent &- Drafts", "Sent & Drafts"),
    ("[Gmail]/&BBIEMAQ2BD0EPgQ1-", "[Gmail]/Важное"),
    ("a&AKA-b", "a\u00a0b"),  # non-printable space: encoded
]


@pytest.mark.parametrize("wire, text", NAMES)
def test_names_both_ways(wire, text):
    assert decode_mailbox_name(wire) == text
    assert encode_mailbox_name(text) == wire


# Not modified UTF-7: kept as they are, so they match no decoded name. Dovecot refuses
# the same ones, so "Trash" written as &AFQ-rash is not Trash to either.
INVALID = [
    "&AFQ-rash",  # printable ASCII encoded
    "&ACY-",  # "&" encoded
    "&AAA-",  # NUL
    "&2D0-",  # a lone high surrogate
    "&3gA-",  # a lone low surrogate
    "&APw",  # no "-"
    "x&",
    "&AP-",  # an odd number of bytes
    "&A-",  # not even one byte
    "&AP w-",  # not base64
    "&APw=-",  # padding
    "&AP/8-",  # "/" instead of ","
    "Entwürfe",  # raw 8-bit: UTF-8 names come only after ENABLE UTF8=ACCEPT
    "tab\there",
    "ok &APw- and &AFQ-",  # one bad part spoils the name
]


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_are_kept_as_they_are(name):
    assert decode_mailbox_name(name) == name


@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")))
def test_any_text_is_written_and_read_back(text):
    """Any text but NUL, which no mailbox name may hold."""
    wire = encode_mailbox_name(text)
    assert wire.isascii() and all(" " <= c <= "~" for c in wire)
    assert decode_mailbox_name(wire) == text


@given(st.text(st.sampled_from("&-AP+,w/=8 aZ\u00fc")) | st.text())
def test_any_name_decodes_without_raising(name):
    decoded = decode_mailbox_name(name)
    if decoded != name:  # it was modified UTF-7: written again, it reads the same
        assert decode_mailbox_name(encode_mailbox_name(decoded)) == decoded
