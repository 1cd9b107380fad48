"""headers: content rules on the whole message: regular expressions on named headers
and on the text of its text parts, the file names and types of its attachments (the
files inside zip and tar archives included), and the GTUBE test string.

    [plugin.headers]
    gtube = "reject"            # the GTUBE test string in a text part
    corrupt_archive = 1.0       # a zip or tar attachment that cannot be read
    unparsable = 1.0            # a message the MIME parser gives up on
    mime_limit = 3.0            # a message that reached a limit: some of it not looked at
    max_parts = 100             # MIME parts looked at, the message itself the first
    max_depth = 10              # multiparts inside one another
    max_text_bytes = 1048576    # of each text part (decoded) and of each header value
    max_archive_bytes = 10485760
    max_archive_members = 1000
    thread_bytes = 65536        # messages this big or bigger are parsed in a thread
    threads = 4                 # messages parsed in threads at once

    [[plugin.headers.rules]]
    symbol = "SUBJECT_PILLS"
    header = "Subject"          # every Subject line, RFC 2047 decoded
    pattern = '(?i)\\bv[i1]agra\\b'
    action = 3.0

    [[plugin.headers.rules]]
    symbol = "BITCOIN_EXTORTION"
    body = '(?i)send \\d+ (btc|bitcoin)'   # text/plain and text/html parts, decoded
    action = 5.0

    [[plugin.headers.rules]]
    symbol = "BAD_ATTACHMENT"
    filename = ["*.exe", "*.scr", "*.js"]  # attachments, and the files in archives
    action = "reject"

    [[plugin.headers.rules]]
    symbol = "EXECUTABLE_TYPE"
    mime_type = ["application/x-msdownload", "application/x-dosexec"]
    action = "reject"

Each rule looks at one thing:
- `header` (a name, without regard to case) with `pattern`: every occurrence of that
  header of the message itself (not of a message attached to it), unfolded, raw UTF-8
  read as such and encoded words (RFC 2047) decoded;
- `body`: the text of every text/plain and text/html part, transfer encoding (base64,
  quoted-printable) and charset undone; HTML as it is, tags and all;
- `filename`: every name a part gives itself (each filename and name parameter of
  each Content-Disposition and Content-Type field, plain and RFC 2231 forms both, for
  mail programs differ in which they show; RFC 2231 and RFC 2047 decoded), and the
  name of every file in the zip and tar archives attached, each without its
  directory, without the trailing dots and spaces Windows ignores (`*.exe` finds
  `Invoice.EXE.` and `docs/setup.exe`);
- `mime_type`: the declared Content-Type of every part (text/plain where it is missing
  or malformed, as RFC 2045 says).
Patterns are Python regular expressions, searched anywhere in the text (`(?i)` for no
case), and compiled when the configuration is loaded: one that does not compile is a
configuration error. A case-insensitive pattern that begins with plain text, as
`(?i)send \\d+` does, is searched only in the texts that hold that text in any case,
which makes it cheap on most mail; one that begins otherwise (`(?i)\\d+ btc`) is tried
at every position of every text (see _prefilter.py). `filename` and `mime_type` are
lists of shell-style globs on the whole name or type, without regard to case.

A rule's `action` is "reject" (`550 5.7.1 Message content rejected (SYMBOL)`),
"tempfail" (`451 4.7.1 Message content deferred, try again later (SYMBOL)`), "off" or
points, given under its `symbol` (upper-case letters, digits and `_`; each rule its
own). Every rule is tried on every message; each that matches is one verdict: the
points of all of them are added to the message's score, each under its symbol, and a
rejecting rule wins over a deferring one.

Built in, with their own symbols: GTUBE (on by default: "reject"), the test string
SpamAssassin and Rspamd know, in a text part; ARCHIVE_CORRUPT, a zip or tar attachment
that zipfile or tarfile cannot read, which no honest mail program sends but which is a
way to hide a file from scanners that some unpackers still open (points by default);
MIME_UNPARSABLE, a message the `email` package gives up on (its body rules then see its
raw body, and nothing else is looked at; points by default); MIME_LIMIT (`mime_limit`,
3 points by default), a message that reached one of the limits below that leave parts,
archive members or the whole message unlooked at: what is beyond a limit could be
the attachment a rule would refuse, so a site that wants no such blind spot sets
"reject" or "tempfail" (honest mail seldom has more than 100 parts or 20 nested
multiparts; a big archive does reach max_archive_bytes).

Archives: a part is a zip by its first bytes (Office documents and Java archives are
zips too), or by one of its names (`.zip`) or its type; a tar (plain, gzip, bzip2, xz)
by its first bytes, its names (`.tar`, `.tgz`, `.tar.gz`, ...) or type; other gzip,
bzip2 or xz data is tried as a tar (and is no finding when it is none). Only the
names are read, never the files: a zip's central directory, a tar's headers as a
stream. A zip with more than one end record is ARCHIVE_CORRUPT (zip programs differ
in which archive they show). Archives inside archives are not opened (their names
count). An archive larger than `max_archive_bytes` is not opened; the compressed tars
of a message are unpacked no further than `max_archive_bytes` all together (a hundred
bombs cost no more than one), and their names read so far count; at most
`max_archive_members` names of each are looked at.

Limits bound the work a hostile message can cause, and what is beyond them is not
looked at (MIME_LIMIT). Before the parser sees the message, one pass over its lines
looks for what would make the `email` package slow: a Content-Type or
Content-Disposition field (anywhere, folded lines and all) over 4 KiB or with more
than 100 parameters costs it time in the square of its size, and no mail program
writes one, so such a message is not taken apart at all (its body rules see its raw
body); the parser reads the message only up to its (2 x `max_parts`)-th delimiter
line (one of a boundary declared) and only `max_depth` multiparts inside one another
(it checks every line against every open boundary). At most `max_parts` parts are
looked at, and `max_text_bytes` of each text part and header value (a text cut short
is no MIME_LIMIT). A malformed message never makes the hook fail: what the parser
finds wrong is counted, and a message it cannot take apart at all is MIME_UNPARSABLE.

Like the other shipped checks, the rules judge sessions on the listener modes in
`modes` (default ["mx"]) and skip authenticated sessions and clients in
`skip_clients` (default: loopback, private and link-local networks). Content rules
are a defence against mail from strangers; the site's own users and hosts answer for
their mail in other ways, and a rule that refused their attachments would stop their
legitimate mail with no way round it.

The hook parses the whole message, which takes CPU time in proportion to its size
(about a second for 10 MB on a busy machine, a few milliseconds for 64 KiB). A message
smaller than `thread_bytes` is parsed at once, in the event loop: that is cheaper than
handing it to a thread, and holds up the other sessions no longer than the handoff
would. A message of `thread_bytes` or more is parsed in a thread of the plugin's own
lane (`threads` of them, daemon threads, busy ones in mailproxy_plugin_threads_busy),
so that a 10 MB message does not stall the other sessions (the parse still holds
Python's GIL, which the event loop gets back every few milliseconds). The hook's
`timeout` (15 s) bounds the wait for a message's verdict: past it the hook fails (its
`fail_mode`, tempfail by default). A thread cannot be stopped, so a parse that
outlives its hook goes on to its end and holds its thread meanwhile (a stopping proxy
does not wait for it); messages that come when every thread is busy wait their turn, under their
own timeout. (Any plugin with an smtp_data hook makes the proxy take every message
whole before the upstream hears DATA.)

Metrics (mailproxy_plugin_checks_total, plugin="headers"): check=SYMBOL,
result=matched for each rule that matched a message; check=parse, result=clean,
defects, failed or skipped (an abusive field) for each message; check=limit,
result=max_parts, max_depth, abusive_field, max_text_bytes, max_archive_bytes or
max_archive_members for each message that reached one.
mailproxy_plugin_check_duration_seconds{check="message"} times each message's scan.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from operator import attrgetter, methodcaller
from typing import Annotated, Callable

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from mailproxy import Action as VerdictAction
from mailproxy import Session, Verdict, hookimpl
from mailproxy.threads import ThreadLane

from ._common import Action, ClientCheckSettings, ClientFilter, count, timed
from ._mime import Limits, MessageContents
from ._prefilter import searcher

PLUGIN = "headers"

# The Generic Test for Unsolicited Bulk Email, as SpamAssassin and Rspamd know it.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
BUILT_IN_SYMBOLS = ("GTUBE", "ARCHIVE_CORRUPT", "MIME_UNPARSABLE", "MIME_LIMIT")
TARGETS = ("header", "body", "filename", "mime_type")

_SYMBOL = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII but the colon (RFC 5322 2.2)


def _symbol(value: str) -> str:
    # Upper case keeps symbols apart from this plugin's own metric checks ("parse").
    if not _SYMBOL.fullmatch(value):
        raise ValueError(f"{value!r} is not a symbol: upper-case letters, digits and _, "
                         "starting with a letter, at most 64 (like BAD_ATTACHMENT)")
    return value


def _header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a header name (like Subject or X-Mailer)")
    return value


def _regex(value: object) -> object:
    if not isinstance(value, str):
        return value  # pydantic says what is wrong with it
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a regular expression: {exc}") from None


Symbol = Annotated[str, AfterValidator(_symbol)]
Regex = Annotated[re.Pattern, BeforeValidator(_regex)]
Globs = Annotated[list[str], Field(min_length=1)]


class Rule(BaseModel):
    """One `[[plugin.headers.rules]]` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    symbol: Symbol
    action: Action
    header: Annotated[str, AfterValidator(_header_name)] | None = None  # with pattern
    pattern: Regex | None = None  # searched in each value of `header`
    body: Regex | None = None  # searched in the text of each text part
    filename: Globs | None = None  # attachments' names and the names inside archives
    mime_type: Globs | None = None  # every part's declared type

    @model_validator(mode="after")
    def _one_target(self) -> Rule:
        if (self.header is None) != (self.pattern is None):
            raise ValueError("header and pattern go together: the header's name, and the "
                             "regular expression for its values")
        given = [key for key in TARGETS if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(f"a rule looks at exactly one of {', '.join(TARGETS)} "
                             f"(this one: {', '.join(given) or 'none'})")
        return self


@dataclass(frozen=True, slots=True)
class _Check:
    symbol: str
    action: str | float
    found: Callable[[MessageContents], bool]
    what: str  # what it finds, for the log and the why-trace

    def verdict(self) -> Verdict:
        if self.action == "reject":
            return Verdict.reject(550, "5.7.1", f"Message content rejected ({self.symbol})")
        if self.action == "tempfail":
            return Verdict.tempfail(451, "4.7.1", f"Message content deferred, try again later ({self.symbol})")
        return Verdict.score(self.symbol, self.action, reason=self.what)


def _any(texts: Callable[[MessageContents], list[str]], finds: Callable[[str], object]):
    def found(contents: MessageContents) -> bool:  # a loop: no generator per check and message
        for text in texts(contents):
            if finds(text):
                return True
        return False
    return found


def _globs(globs: list[str]) -> re.Pattern:
    return re.compile("|".join(fnmatch.translate(glob.lower()) for glob in globs))


def _check(rule: Rule) -> _Check:
    if rule.header is not None:
        found = _any(methodcaller("header", rule.header), searcher(rule.pattern))
        what = f"{rule.header} matches {rule.pattern.pattern}"
    elif rule.body is not None:
        found = _any(attrgetter("texts"), searcher(rule.body))
        what = f"a text part matches {rule.body.pattern}"
    elif rule.filename is not None:
        found = _any(attrgetter("file_names"), _globs(rule.filename).match)
        what = f"a file name matches {', '.join(rule.filename)}"
    else:
        found = _any(attrgetter("content_types"), _globs(rule.mime_type).match)
        what = f"a part's type matches {', '.join(rule.mime_type)}"
    return _Check(rule.symbol, rule.action, found, what)


# The engine takes a hook's verdicts in order and stops at the first refusal.
_ORDER = {VerdictAction.SCORE: 0, VerdictAction.REJECT: 1, VerdictAction.TEMPFAIL: 2}


class Plugin:
    class Config(ClientCheckSettings):
        rules: list[Rule] = []
        gtube: Action = "reject"
        corrupt_archive: Action = 1.0
        unparsable: Action = 1.0
        mime_limit: Action = 3.0
        max_parts: int = Field(100, ge=1, le=1000)
        max_depth: int = Field(10, ge=1, le=100)
        max_text_bytes: int = Field(1048576, ge=1)
        max_archive_bytes: int = Field(10485760, ge=0)  # 0: archives are not opened
        max_archive_members: int = Field(1000, ge=1)
        timeout: float = Field(15.0, gt=0, le=300)
        # Messages of this many bytes or more are parsed in the plugin's threads, the
        # others in the event loop (0: every message in a thread).
        thread_bytes: int = Field(65536, ge=0)
        threads: int = Field(4, ge=1, le=64)

        @field_validator("rules")
        @classmethod
        def _distinct_symbols(cls, rules: list[Rule]) -> list[Rule]:
            owners = {symbol: "built in" for symbol in BUILT_IN_SYMBOLS}
            for index, rule in enumerate(rules):
                if rule.symbol in owners:
                    raise ValueError(f"the symbol {rule.symbol} of rules[{index}] is taken "
                                     f"({owners[rule.symbol]})")
                owners[rule.symbol] = f"by rules[{index}]"
            return rules

    def __init__(self, settings: Config, context) -> None:
        self._filter = ClientFilter(settings)
        self._limits = Limits(settings.max_parts, settings.max_text_bytes,
                              settings.max_archive_bytes, settings.max_archive_members, settings.max_depth)
        checks = [
            _Check("GTUBE", settings.gtube, _any(attrgetter("texts"), lambda text: GTUBE in text),
                   "the GTUBE test string"),
            _Check("ARCHIVE_CORRUPT", settings.corrupt_archive, lambda contents: contents.corrupt_archives > 0,
                   "a zip or tar archive that cannot be read"),
            _Check("MIME_UNPARSABLE", settings.unparsable, attrgetter("parse_failed"),
                   "a message the MIME parser gave up on"),
            *(_check(rule) for rule in settings.rules),
            # Last: the limits of what the checks before it read.
            _Check("MIME_LIMIT", settings.mime_limit, attrgetter("limit_reached"),
                   "a message that reached a limit, some of it not looked at"),
        ]
        self._checks = [check for check in checks if check.action != "off"]
        self._thread_bytes = settings.thread_bytes
        self._lane = ThreadLane(PLUGIN, settings.threads)

    @hookimpl
    async def smtp_data(self, session: Session, message: bytes) -> list[Verdict] | None:
        if not self._checks or self._filter.skips(session):
            return None
        if len(message) < self._thread_bytes:
            contents, found = self._scan(message)
        else:
            contents, found = await self._lane.call(self._scan, (message,))
        self._count(contents, found)
        if not found:
            return None
        # One verdict per matching rule, points first, then the refusals, a rejection
        # before a deferral: the engine takes them in order and stops at the first
        # refusal, so that every symbol is logged and traced, and each one's points
        # are added under its own name.
        return sorted((check.verdict() for check in found), key=lambda v: _ORDER[v.action])

    def _scan(self, message: bytes) -> tuple[MessageContents, list[_Check]]:
        """The message taken apart, and the checks that found something in it."""
        with timed(PLUGIN, "message"):
            contents = MessageContents(message, self._limits)
            return contents, [check for check in self._checks if check.found(contents)]

    @staticmethod
    def _count(contents: MessageContents, found: list[_Check]) -> None:
        if contents.parsed:
            parsed = "defects" if contents.defects else "clean"
        else:
            parsed = "failed" if contents.parse_failed else "skipped"
        count(PLUGIN, "parse", parsed)
        for limit in sorted(contents.limits_hit):
            count(PLUGIN, "limit", limit)
        for check in found:
            count(PLUGIN, check.symbol, "matched")
