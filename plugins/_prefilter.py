"""A cheap test that rules a case-insensitive regular expression out before its search:
the literal text every one of its matches begins with.

Python's `re` skips ahead to a pattern's leading literal only when case matters. A
case-insensitive content rule such as `(?i)send \\d+ (btc|bitcoin)` is tried at every
position of every text part, which costs more than parsing the message. Here the
leading literal is read from the pattern's source, conservatively: whatever this
reading does not understand gives no literal, and then the pattern is always searched.
A text that does not contain the literal, without regard to case, cannot match.

Only ASCII literals are used, and texts are compared in lower case. `re`, ignoring
case, also takes three characters whose lower case is not an ASCII letter for one: the
dotted I (whose lower case is two characters), the dotless i and the long s. A text
with any of them is always searched.
"""

from __future__ import annotations

import re
from typing import Callable

# Characters with a meaning of their own in a pattern (outside a character class).
_SPECIAL = frozenset(".^$*+?{}[]\\|()")
# What may follow a character that makes it optional (`*`, `?`, `{0,...}`).
_OPTIONAL_AFTER = frozenset("*?{")
# Global inline flags at the start of a pattern: `(?i)`, `(?ims)`...
_FLAGS = re.compile(r"\(\?[aiLmsux]+\)")
# A group with verbose mode of its own, `(?x:...)`, `(?ix-s:...)`: its comments can
# hold any character, `(`, `[` and `|` included.
_SCOPED_VERBOSE = re.compile(r"\(\?[aiLmsux]*x[aiLmsux]*(?:-[imsx]*)?:")
# Zero-width assertions a literal may follow: they consume nothing.
_ASSERTIONS = ("^", "\\A", "\\b", "\\B")
# The characters `re` matches to an ASCII letter when ignoring case, although their
# lower case is not that letter alone (tests/unit/test_plugin_prefilter.py finds them
# among all of Unicode).
ASCII_LOOKALIKES = re.compile("[\u0130\u0131\u017f]")


def leading_literal(pattern: re.Pattern) -> str:
    """The ASCII text every match of `pattern` begins with, '' when none is known."""
    source = pattern.pattern
    if (not isinstance(source, str) or pattern.flags & re.VERBOSE
            or "(?#" in source or _SCOPED_VERBOSE.search(source)):
        return ""  # whitespace and comments would need a parser of their own
    position = _after_flags(source)
    if _alternates_at_top(source, position):
        return ""
    while True:
        assertion = next((a for a in _ASSERTIONS if source.startswith(a, position)), None)
        if assertion is None:
            break
        position += len(assertion)
    literal: list[str] = []
    while position < len(source):
        char = source[position]
        if char == "\\":
            char = source[position + 1 : position + 2]
            if not char or char.isalnum() or not char.isascii():
                break  # a class (\d), an assertion (\b), a code (\x41) or a back reference
            width = 2
        elif char in _SPECIAL or not char.isascii():
            break
        else:
            width = 1
        following = source[position + width : position + width + 1]
        if following in _OPTIONAL_AFTER:
            break
        literal.append(char)
        if following == "+":
            break  # once at least, then perhaps again
        position += width
    return "".join(literal)


def _after_flags(source: str) -> int:
    position = 0
    while match := _FLAGS.match(source, position):
        position = match.end()
    return position


def _alternates_at_top(source: str, position: int) -> bool:
    """Whether `source` has a `|` outside every group, which would make the leading
    literal one alternative's only."""
    depth = 0
    in_class = False
    while position < len(source):
        char = source[position]
        if char == "\\":
            position += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # A `]` first in a class (after an optional `^`) is one of its members.
            position += 1
            if source.startswith("^", position):
                position += 1
            if source.startswith("]", position):
                position += 1
            continue
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            return True
        position += 1
    return False


def searcher(pattern: re.Pattern) -> Callable[[str], object]:
    """`pattern.search`, preceded for a case-insensitive pattern with a leading literal
    by a test for that literal; a text it rules out gives None, as the search would."""
    literal = leading_literal(pattern).lower() if pattern.flags & re.IGNORECASE else ""
    if not literal:
        return pattern.search
    search = pattern.search

    def prefiltered(text: str) -> object:
        if literal in text.lower() or (not text.isascii() and ASCII_LOOKALIKES.search(text)):
            return search(text)
        return None

    return prefiltered
