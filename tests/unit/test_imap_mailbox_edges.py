"""Mailbox names in modified UTF-7 at their edges: every direct part of a name is
checked, not only the one before the first encoded part."""

from __future__ import annotations

import pytest

from mailproxy.protocol.imap_mailbox import decode_mailbox_name


@pytest.mark.parametrize(
    "name",
    [
        "Entw&APw-rfé",  # raw 8-bit after an encoded part
        "&APw-&",  # a bare "&" after one
        "a&AOQ-b&AOQ-\x7f",  # DEL after the second
    ],
)
def test_a_name_broken_after_an_encoded_part_is_kept_as_it_is(name):
    assert decode_mailbox_name(name) == name
