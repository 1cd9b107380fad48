"""Every hook a plugin can implement, grouped by phase.

How results combine, for every policy hook (those returning `Verdict | None`):
plugins run in the order of `[plugins] enabled`. `None` or `Verdict.cont()` passes to the
next plugin; `Verdict.score(...)` adds points and passes on; `Verdict.accept()` ends the
phase, skipping the remaining plugins; `reject`, `tempfail` and `disconnect` end the
phase and are sent to the client, unless the plugin runs in observe mode, in which case
they are logged and counted only. If no plugin refuses, the command goes to the
upstream, whose reply the client receives. A hook that finds several things (one score
per matched rule, say) may return a list or tuple of Verdicts: they are taken in order,
as if returned one after another.

Scores: points given in `smtp_connect`, `smtp_helo`, `smtp_auth`, and in `smtp_command`
outside a transaction, judge the client and stay on the Session for its whole life;
points given in `smtp_mail`, `smtp_rcpt`, `smtp_data` (and `smtp_command` during a
transaction) judge one message and go with its Envelope, which RSET, a new EHLO or the
end of the message replaces. A repeated HELO/EHLO or MAIL replaces the points the last
one gave. Each score is recorded as (plugin, hook, symbol, points) in `score_entries`;
`score` and `symbols` sum them. `[policy] reject_score` and `tempfail_score` apply to the
session's and the transaction's points together, after a phase that scored and at every
MAIL, RCPT and DATA.

A refusal at `smtp_connect` replaces the greeting: a temporary one is sent as
`421 <hostname> text`, a permanent one as `554 text`, and the session ends.

A hook may be a plain function or a coroutine function. Anything that waits on the
network (DNS, Redis, HTTP) should be a coroutine function: the per-plugin timeout
interrupts a coroutine, while a plain function runs inside the event loop and stalls
every session of the process until it returns. A plugin whose plain hooks may block
sets `blocking = true`: they then run in worker threads (at most 8 per plugin) under
the same timeout. A call that times out cannot be stopped; it runs on in its thread
until it returns, and holds that thread meanwhile.

Whatever a hook raises, `SystemExit` and `CancelledError` included, counts as that
plugin's failure and gets its `fail_mode`. It is logged with its traceback, unless the
exception has a true `expected` attribute: a failure its message explains (a server
that is down), logged in one line.

Arguments are passed by name; an implementation may accept any subset of them.
"""

from __future__ import annotations

import pluggy

from .session import Envelope, Session
from .verdict import Verdict

PROJECT = "mailproxy"
hookspec = pluggy.HookspecMarker(PROJECT)

# Hooks whose results are policy verdicts, by protocol phase.
POLICY_HOOKS = (
    "smtp_connect",
    "smtp_command",
    "smtp_helo",
    "smtp_auth",
    "smtp_mail",
    "smtp_rcpt",
    "smtp_data",
    "pop3_connect",
    "pop3_command",
    "pop3_login",
    "imap_connect",
    "imap_command",
    "imap_login",
)
# Hooks that only observe; their return value is ignored.
NOTIFY_HOOKS = ("smtp_reset", "smtp_disconnect", "pop3_disconnect", "imap_completed", "imap_disconnect")
# The credential check and the mail store routing: the first definite answer wins.
FIRST_RESULT_HOOKS = ("authenticate", "route")


# --- connection -------------------------------------------------------------------------


@hookspec
def smtp_connect(session: Session) -> Verdict | None:
    """A client connected; runs before the greeting is relayed.

    `session.client_address` and `session.listener` are set, and `session.client_name`
    (the verified host name, or "[UNAVAILABLE]"/"[TEMPUNAVAIL]") when the proxy looks
    names up; nothing has been said yet.
    A refusal is sent instead of the upstream's greeting, as `421 <hostname> text` if
    temporary or `554 text` if permanent (the only codes a greeting may have), and the
    session ends. Points scored here stay with the session.
    """


@hookspec
def smtp_command(session: Session, verb: str, argument: str) -> Verdict | None:
    """Every command line the client sends, before the command's own hook.

    `verb` is upper-case (`MAIL`, `XFOO`, ...), `argument` the rest of the line. AUTH
    arguments are not passed (they may carry credentials): `argument` is the mechanism.
    A refusal answers this command instead of running it.
    """


@hookspec
def smtp_helo(session: Session, hostname: str) -> Verdict | None:
    """HELO or EHLO; `session.extended_smtp` tells which. Runs before it is forwarded."""


# --- authentication ---------------------------------------------------------------------


@hookspec
def smtp_auth(session: Session, mechanism: str, username: str) -> Verdict | None:
    """Policy on an AUTH attempt, after the credentials were read, before they are checked.

    A refusal answers the AUTH command; the credentials are then not checked at all.
    """


@hookspec(firstresult=True)
def authenticate(
    session: Session, mechanism: str, username: str, password: str
) -> bool | None:
    """Check a username and password.

    Return True (valid), False (invalid) or None (this backend does not know the user).
    Backends are asked in order (`[auth] backends` first, then enabled plugins); the
    first True or False decides. If every backend answers None, the attempt fails.
    """


# --- transaction ------------------------------------------------------------------------


@hookspec
def smtp_mail(
    session: Session, envelope: Envelope, address: str, params: dict[str, str | bool]
) -> Verdict | None:
    """MAIL FROM. `address` is the reverse-path without brackets ('' for the null sender);
    `params` the ESMTP parameters (`SIZE`, `BODY`, ...), upper-case names."""


@hookspec
def smtp_rcpt(
    session: Session, envelope: Envelope, address: str, params: dict[str, str | bool]
) -> Verdict | None:
    """RCPT TO, once per recipient. `envelope.rcpt_tos` holds the recipients accepted so
    far (by the policy and the upstream); `address` is not yet among them."""


@hookspec
def smtp_data(session: Session, envelope: Envelope, message: bytes) -> Verdict | None:
    """The whole message, after end-of-data, before it is sent to the upstream.

    `message` has CRLF line ends and no dot-stuffing. Call `envelope.add_header(name,
    value)` to add a header line at the top of the forwarded message. A refusal answers
    the end-of-data and the upstream never receives the message.
    """


@hookspec
def smtp_reset(session: Session, envelope: Envelope) -> None:
    """A transaction ended without delivery (RSET, a new EHLO, or the session ending)."""


@hookspec
def smtp_disconnect(session: Session) -> None:
    """The session ended, for whatever reason. For cleanup and accounting."""


# --- mail stores: POP3 ------------------------------------------------------------------


@hookspec
def pop3_connect(session: Session) -> Verdict | None:
    """A POP3 client connected; runs before the proxy's own greeting.

    There is no upstream session yet: it opens at login, once `route` has named the
    upstream. A refusal is sent as `-ERR text` instead of the greeting, and the session
    ends. Points scored here stay with the session.
    """


@hookspec
def pop3_command(session: Session, verb: str, args: tuple[str, ...]) -> Verdict | None:
    """Every POP3 command line, from the first to QUIT, before it is answered or forwarded.

    `verb` is upper-case (`RETR`, `DELE`, ...), `args` the words after it. Credentials
    are never passed: PASS gets no args, AUTH only its mechanism. A reject or tempfail
    answers the command with `-ERR text` (`-ERR [SYS/TEMP] text`), and it is not forwarded;
    a disconnect sends `-ERR text` and ends the session.
    """


@hookspec
def pop3_login(session: Session, mechanism: str, username: str) -> Verdict | None:
    """Policy on a POP3 login (USER/PASS, whose mechanism is `USER`, or AUTH), after the
    credentials were read and before they are checked. A refusal answers the login with
    `-ERR`; the credentials are then not checked at all.
    """


@hookspec
def pop3_disconnect(session: Session) -> None:
    """The POP3 session ended, for whatever reason. For cleanup and accounting."""


# --- mail stores: IMAP ------------------------------------------------------------------


@hookspec
def imap_connect(session: Session) -> Verdict | None:
    """An IMAP client connected; runs before the proxy's own greeting.

    There is no upstream session yet: it opens at login, once `route` has named the
    upstream. A refusal is sent as `* BYE text` instead of the greeting, and the session
    ends. Points scored here stay with the session.
    """


@hookspec
def imap_command(session: Session, tag: str, verb: str, args: tuple) -> Verdict | None:
    """Every IMAP command, from the first to LOGOUT, before it is answered or forwarded.

    `verb` is upper-case, with UID commands as two words (`UID STORE`); `args` the parsed
    arguments: `Atom`, `Quoted`, `Literal` (its `size`, and its `value` only when it was
    small enough to read) and `ParenList` nodes of `mailproxy.protocol.imap`, whose
    `astring(node)` gives the text of a name in whichever form the client sent it. A
    command whose literal streams (an APPEND) is seen once, with its arguments up to that
    literal. Credentials are never passed: LOGIN and AUTHENTICATE get only their first
    argument. A reject answers `tag NO text`, a tempfail `tag NO [UNAVAILABLE] text`, and
    the command is not forwarded; a disconnect sends `* BYE text` and ends the session.
    """


@hookspec
def imap_login(session: Session, mechanism: str, username: str) -> Verdict | None:
    """Policy on an IMAP login (LOGIN, whose mechanism is `LOGIN`, or AUTHENTICATE PLAIN),
    after the credentials were read and before they are checked. A refusal answers the
    login with `tag NO`; the credentials are then not checked at all.
    """


@hookspec
def imap_completed(session: Session, tag: str, verb: str, args: tuple, status: str, facts: dict) -> None:
    """An IMAP command the proxy forwarded got its tagged answer from the upstream.

    `status` is OK, NO or BAD. `facts` holds what its untagged responses said: `exists`
    (messages in the mailbox, after SELECT/EXAMINE or when new mail arrived), `fetched`
    (FETCH responses), `expunged` (EXPUNGE and VANISHED), `read_only`. They are counted
    against the oldest command still open, so under pipelining they are approximate.
    `session.mailbox` is the selected mailbox, updated by SELECT, EXAMINE, CLOSE and
    UNSELECT before this runs. For auditing; only run when a plugin implements it.
    """


@hookspec
def imap_disconnect(session: Session) -> None:
    """The IMAP session ended, for whatever reason. For cleanup and accounting."""


# --- mail stores: routing ---------------------------------------------------------------


@hookspec(firstresult=True)
def route(session: Session, username: str) -> str | None:
    """Which upstream serves this user's mailbox: the name of an `[upstreams.NAME]` section.

    Asked at a POP3 or IMAP login, after the credentials were read and the login policy
    passed, and before they are checked (the `upstream` credential backend asks the
    routed upstream). The first plugin that returns a name decides; `None` from every
    plugin means the listener's own `upstream`. A name that is not a configured upstream
    fails the login as temporarily unavailable.
    """
