"""imap_audit: one structured log line per mailbox access over IMAP: who, what, which
mailbox, with what outcome, and how many messages.

    [plugin.imap_audit]
    verbs = ["SELECT", "EXAMINE", "FETCH", "STORE", "COPY", "MOVE", "EXPUNGE", "APPEND",
             "STATUS", "CREATE", "DELETE", "RENAME"]   # the default; UID forms included

Each line goes to the logger `mailproxy.audit` (route it to its own file with the
logging configuration) as JSON:

    {"session": "4b2e079c63", "user": "alice@example.test", "client": "192.0.2.7",
     "verb": "SELECT", "mailbox": "INBOX", "status": "OK", "exists": 12, "read_only": false}

`mailbox` is the mailbox the command names (SELECT, EXAMINE, STATUS, APPEND, CREATE,
DELETE; RENAME's source, with `to` for its target), else the selected one (FETCH, STORE,
EXPUNGE, COPY and MOVE, which also give `to`). Names are decoded from modified UTF-7.
Counts are present when the upstream's responses gave them: `exists`, `fetched`,
`expunged`; under pipelining they are approximate. `read_only` after SELECT and
EXAMINE. A command the proxy refused never reached the mailbox and is not logged here
(the policy log and metrics have it). Lines are counted in
`mailproxy_plugin_checks_total{plugin="imap_audit", check="access", result=<status>}`.
"""

from __future__ import annotations

import json
import logging

from mailproxy import PluginSettings, Session, hookimpl
from mailproxy.protocol.imap import Literal, astring
from mailproxy.protocol.imap_mailbox import decode_mailbox_name

from ._common import count

PLUGIN = "imap_audit"
# Commands whose first argument is the mailbox they touch (after the UID prefix).
NAMED = frozenset({"SELECT", "EXAMINE", "STATUS", "APPEND", "CREATE", "DELETE", "RENAME"})
# Commands on the selected mailbox whose last argument is a target mailbox.
TARGETED = frozenset({"COPY", "MOVE"})

audit = logging.getLogger("mailproxy.audit")


class Plugin:
    class Config(PluginSettings):
        verbs: list[str] = [
            "SELECT", "EXAMINE", "FETCH", "STORE", "COPY", "MOVE", "EXPUNGE", "APPEND",
            "STATUS", "CREATE", "DELETE", "RENAME",
        ]

    def __init__(self, settings: Config, context) -> None:
        self._verbs = frozenset(verb.upper() for verb in settings.verbs)

    @hookimpl
    def imap_completed(self, session: Session, verb: str, args: tuple, status: str, facts: dict) -> None:
        base = verb.removeprefix("UID ")
        if base not in self._verbs:
            return
        line: dict = {
            "session": session.id, "user": session.username, "client": session.client_address,
            "verb": verb, "mailbox": session.mailbox, "status": status,
        }
        if base in NAMED and args:
            line["mailbox"] = _name(args[0])
            if base == "RENAME" and len(args) > 1:
                line["to"] = _name(args[1])
            if base == "APPEND":
                line["size"] = sum(arg.size for arg in args if isinstance(arg, Literal))
        elif base in TARGETED and args:
            line["to"] = _name(args[-1])
        line.update(facts)
        count(PLUGIN, "access", status.lower())
        audit.info("%s", json.dumps(line, ensure_ascii=False))


def _name(node) -> str | None:
    name = astring(node)
    return decode_mailbox_name(name) if name is not None else None
