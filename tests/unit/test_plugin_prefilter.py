"""The prefilter before a case-insensitive content rule's search: the leading literal it
reads from the pattern, and that it never rules out a text the pattern matches."""

from __future__ import annotations

import re
import string
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins._prefilter import ASCII_LOOKALIKES, leading_literal, searcher


@pytest.mark.parametrize(
    ("pattern", "literal"),
    [
        (r"(?i)send \d+ (btc|bitcoin)", "send "),
        (r"send", "send"),
        (r"(?i)(?s)abc.", "abc"),
        (r"(?ims)abc", "abc"),
        (r"(?i)\bviagra\b", "viagra"),
        (r"(?i)^\Aabc", "abc"),
        (r"(?i)\Bab", "ab"),
        (r"(?i)a\.b\-c", "a.b-c"),
        (r"(?i)a\_b", "a_b"),
        (r"(?i)ab*c", "a"),
        (r"(?i)ab?c", "a"),
        (r"(?i)ab{2}c", "a"),
        (r"(?i)ab+c", "ab"),
        (r"(?i)ab\+c", "ab+c"),
        (r"(?i)a\db", "a"),
        (r"(?i)ab\x41", "ab"),
        (r"(?i)(a)\1", ""),
        (r"(?i)ab[cd]", "ab"),
        (r"(?i)ab(cd)", "ab"),
        (r"(?i)ab.c", "ab"),
        (r"(?i)ab$", "ab"),
        (r"(?i)straße", "stra"),
        (r"(?i)\ßx", ""),
        (r"(?i)ab|cd", ""),
        (r"(?i)ab(c|d)e|f", ""),
        (r"(?i)ab(c|d)ef", "ab"),
        (r"(?i)ab[|]cd", "ab"),
        (r"(?i)ab[]|]cd", "ab"),
        (r"(?i)ab[^]|]cd", "ab"),
        (r"(?i)ab\|cd", "ab|cd"),
        (r"(?i)abc|d", ""),
        (r"(?i)ab[c]d|e", ""),
        (r"(?i)ab[x|]cd", "ab"),
        (r"(?i)ab[]]|cd", ""),
        (r"(?i)ab[^]]|cd", ""),
        (r"(?i)ab\(|cd", ""),
        (r"(?i)ab(?#(x)|cd", ""),
        (r"(?x)ab", ""),
        # A verbose group's comment may hold brackets that hide a top-level `|`.
        ("(?i)wire\\s+transfer(?x:  # 1) the classic\n)|gift\\s*cards", ""),
        ("(?i)send(?x:#(\n)|viagra", ""),
        ("(?i)cheap(?x:#[\n)|viagra", ""),
        ("(?i)ab(?ix-s:c)d", ""),
        (r"(?i)(?=ab)ab", ""),
        (r"(?i)\*ab", "*ab"),
        (r"", ""),
    ],
)
def test_leading_literal(pattern: str, literal: str) -> None:
    assert leading_literal(re.compile(pattern)) == literal


def test_bytes_patterns_have_no_literal() -> None:
    assert leading_literal(re.compile(rb"(?i)send")) == ""


def test_case_sensitive_patterns_are_searched_as_they_are() -> None:
    # re already skips ahead to a case-sensitive pattern's literal.
    pattern = re.compile("send")
    assert searcher(pattern) == pattern.search


def test_a_text_without_the_literal_is_not_searched() -> None:
    searched: list[str] = []

    class Recording:
        # The attributes searcher reads, and a search that records what it was given.
        pattern = r"(?i)send \d+"
        flags = re.IGNORECASE | re.UNICODE

        def search(self, text: str):
            searched.append(text)
            return re.search(self.pattern, text)

    search = searcher(Recording())  # type: ignore[arg-type]
    assert search("please wire the money") is None
    assert search("caf\u00e9, na\u00efve and no such word") is None  # not ASCII, no lookalike
    assert searched == []
    assert search("then SEND 5 btc") is not None
    assert searched == ["then SEND 5 btc"]


@pytest.mark.parametrize(
    "text",
    ["SEND 5 BTC", "Send 5 btc", "\u017fend 5 btc", "\u0130 send 1 bitcoin", "\u212a: seND 9 BiTcOiN"],
)
def test_matches_whatever_the_case(text: str) -> None:
    pattern = re.compile(r"(?i)send \d+ (btc|bitcoin)")
    assert pattern.search(text) is not None
    assert searcher(pattern)(text) is not None


def test_an_alternative_behind_a_verbose_groups_comment_is_found() -> None:
    pattern = re.compile("(?i)wire\\s+transfer(?x:  # 1) the classic\n)|gift\\s*cards")
    assert searcher(pattern)("Pay with GIFT CARDS") is not None


def test_the_long_s_and_the_dotless_i_are_searched() -> None:
    # lower() leaves them as they are, yet re takes them for s and i.
    assert searcher(re.compile("(?i)send"))("\u017fend") is not None
    assert searcher(re.compile("(?i)bitcoin"))("b\u0131tcoin") is not None
    assert searcher(re.compile("(?i)bitcoin"))("B\u0130TCOIN") is not None
    assert searcher(re.compile("(?i)kilo"))("\u212aILO") is not None


def test_the_lookalikes_are_every_character_re_takes_for_an_ascii_one() -> None:
    """Among all of Unicode, the characters that `re`, ignoring case, matches to a
    printable ASCII character whose lower case is not that character's are exactly the
    ones the prefilter searches texts with."""
    everything = "".join(chr(code) for code in range(sys.maxunicode + 1))
    others = set()
    for char in string.printable:
        for found in re.findall("(?i)" + re.escape(char), everything):
            if found.lower() != char.lower():
                others.add(found)
    assert others == set(ASCII_LOOKALIKES.findall(everything)) == {"\u0130", "\u0131", "\u017f"}
    # The dotted I is there for lower()'s sake: it becomes two characters.
    assert "\u0130".lower() == "i\u0307"


# Patterns built from pieces: literals of either case, escapes, classes, groups,
# alternations and quantifiers, so that every branch of the reading is met.
_PIECES = st.sampled_from(
    ["a", "B", "ab", "Se", "nd", " ", "\\.", ".", "\\d", "\\b", "[ab]", "[^a]", "(a|b)", "|",
     "*", "+", "?", "{2}", "(?:x)", "^", "$", "\u017f", "\u0131", "\\s",
     "(?x:#(\n)", "(?x:#)\n)", "(?x:#[\n)", "(?x: a b)"]
)
_TEXT = st.text(alphabet="aAbBsSeEnNdDx. 1\u017f\u0131\u0130\u212a\n", max_size=30)


@settings(max_examples=600, deadline=None)
@given(st.lists(_PIECES, min_size=1, max_size=6), _TEXT, st.booleans())
def test_never_rules_out_a_text_the_pattern_matches(pieces: list[str], text: str, ignore_case: bool) -> None:
    source = ("(?i)" if ignore_case else "") + "".join(pieces)
    try:
        pattern = re.compile(source)
    except re.error:
        return  # not a pattern a rule could hold
    expected = pattern.search(text)
    found = searcher(pattern)(text)
    assert (found is None) == (expected is None), (source, text)
