"""retention: protected accounts may read their mail but not delete it, whatever the
client asks of the mail store.

    [plugin.retention]
    accounts = ["archive@example.test", "@legal.example.test"]   # or ["*"] for everyone
    trash_names = ["Trash", "Deleted Items", "Deleted Messages"]

A login matches an entry that is the same address (compared without regard to case), a
"@domain" entry for every address in that domain, or "*". For such an account:

- POP3 `DELE` is refused. A POP3 server deletes only what DELE marked, at QUIT, so
  nothing is deleted.
- IMAP `STORE` and `UID STORE` that set the `\\Deleted` flag (`+FLAGS`, or `FLAGS` that
  replace the flags with a list holding it) are refused; `-FLAGS` and other flags pass.
- IMAP `EXPUNGE` and `UID EXPUNGE` are refused, and so is `DELETE` of a whole mailbox.
- IMAP `MOVE` and `UID MOVE` into the trash are refused: a mailbox named in
  `trash_names` (also below `INBOX.` or `INBOX/`), or one the upstream listed with the
  `\\Trash` special-use attribute (RFC 6154) in this session. Names are compared after
  decoding modified UTF-7, so `&AFQ-rash` is no way around "Trash".

IMAP `CLOSE` is let through: it expunges only messages flagged `\\Deleted`, which a
protected account cannot flag through the proxy. Messages flagged by other means (a
client that reaches the mail store directly) would go; keep such clients off the store.

A refusal reads `-ERR Deletion is not permitted for this account` (POP3) or
`tag NO Deletion is not permitted for this account` (IMAP). Each is counted in
`mailproxy_plugin_checks_total{plugin="retention", check="delete", result="refused"}`.
"""

from __future__ import annotations

import logging

from pydantic import field_validator

from mailproxy import PluginSettings, Session, Verdict, hookimpl
from mailproxy.protocol.imap import Atom, ParenList, astring
from mailproxy.protocol.imap_mailbox import decode_mailbox_name

from ._common import count

PLUGIN = "retention"
TEXT = "Deletion is not permitted for this account"
EXPUNGING = frozenset({"EXPUNGE", "UID EXPUNGE", "DELETE"})
STORING = frozenset({"STORE", "UID STORE"})
MOVING = frozenset({"MOVE", "UID MOVE"})
ADDING_FLAGS = ("+FLAGS", "+FLAGS.SILENT", "FLAGS", "FLAGS.SILENT")

log = logging.getLogger("mailproxy.plugin.retention")


class Plugin:
    class Config(PluginSettings):
        accounts: list[str] = []
        trash_names: list[str] = ["Trash", "Deleted Items", "Deleted Messages"]

        @field_validator("accounts")
        @classmethod
        def _lowercase(cls, accounts: list[str]) -> list[str]:
            for account in accounts:
                if account != "*" and "@" not in account:
                    raise ValueError(f"{account!r} is not an address, an @domain or *")
            return [account.lower() for account in accounts]

    def __init__(self, settings: Config, context) -> None:
        self._everyone = "*" in settings.accounts
        self._accounts = frozenset(settings.accounts)
        self._trash_names = frozenset(settings.trash_names)

    def protects(self, username: str | None) -> bool:
        if username is None:
            return False
        username = username.lower()
        domain = username.rpartition("@")[2]
        return self._everyone or username in self._accounts or f"@{domain}" in self._accounts

    @hookimpl
    def pop3_command(self, session: Session, verb: str) -> Verdict | None:
        if verb != "DELE" or not self.protects(session.username):
            return None
        return self._refuse(session, verb)

    @hookimpl
    def imap_command(self, session: Session, verb: str, args: tuple) -> Verdict | None:
        if not self.protects(session.username):
            return None
        if verb in EXPUNGING or (verb in STORING and _sets_deleted(args)):
            return self._refuse(session, verb)
        if verb in MOVING and args and self._is_trash(session, args[-1]):
            return self._refuse(session, verb)
        return None

    def _is_trash(self, session: Session, node) -> bool:
        name = astring(node)
        if name is None:  # a name too long to have been read: not a trash name
            return False
        name = decode_mailbox_name(name)
        if name in session.special_use:
            return True
        prefix, separator, last = name.partition(".") if "." in name else name.partition("/")
        if separator and prefix.upper() == "INBOX":
            name = last
        return name in self._trash_names

    def _refuse(self, session: Session, verb: str) -> Verdict:
        count(PLUGIN, "delete", "refused")
        log.info("refused %s for %s", verb, session.username)
        return Verdict.reject(text=TEXT)


def _sets_deleted(args: tuple) -> bool:
    """STORE's arguments: a sequence set, an optional (UNCHANGEDSINCE n) modifier
    (RFC 7162), the item, then a flag list or a single flag."""
    words = list(args[1:])
    if words and isinstance(words[0], ParenList):
        words.pop(0)
    if len(words) < 2 or not isinstance(words[0], Atom) or words[0].text.upper() not in ADDING_FLAGS:
        return False
    flags = words[1].items if isinstance(words[1], ParenList) else tuple(words[1:])
    return any(isinstance(flag, Atom) and flag.text.lower() == "\\deleted" for flag in flags)
