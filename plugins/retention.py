"""retention: protected accounts may read their mail but not delete it, whatever the
client asks of the mail store.

    [plugin.retention]
    accounts = ["archive@example.test", "@legal.example.test"]   # or ["*"] for everyone
    trash_names = ["Trash", "Deleted Items", "Deleted Messages"]
    default_domain = "example.test"   # the mail store's auth_default_realm, if it has one
    master_user_separator = "*"       # the mail store's auth_master_user_separator

A login matches an entry that is the same address (compared without regard to case), a
"@domain" entry for every address in that domain, or "*". The login is first read as
the mail store will read it: a master-user login (`alice@example.test*admin`) is the
account before the separator, and a login without a domain gets `default_domain`. A
login that still has no domain is protected if an entry names the same local part or
any entry is an "@domain" one: the store may put it in any domain, so it is refused
rather than guessed. For a protected account:

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
        default_domain: str | None = None
        master_user_separator: str = "*"

        @field_validator("accounts")
        @classmethod
        def _lowercase(cls, accounts: list[str]) -> list[str]:
            for account in accounts:
                if account != "*" and "@" not in account:
                    raise ValueError(f"{account!r} is not an address, an @domain or *")
            return [account.lower() for account in accounts]

    def __init__(self, settings: Config, context) -> None:
        self._settings = settings
        self._everyone = "*" in settings.accounts
        self._accounts = frozenset(settings.accounts)
        self._local_parts = frozenset(a.partition("@")[0] for a in settings.accounts if not a.startswith("@"))
        self._any_domain = any(a.startswith("@") for a in settings.accounts)
        self._trash_names = frozenset(settings.trash_names)

    def account_of(self, username: str) -> str:
        """The account a login names, as the mail store resolves it."""
        name = username.strip().lower()
        separator = self._settings.master_user_separator
        if separator:
            name = name.partition(separator)[0]
        if "@" not in name and self._settings.default_domain:
            name = f"{name}@{self._settings.default_domain.lower()}"
        return name

    def protects(self, username: str | None) -> bool:
        if username is None:
            return False
        if self._everyone:
            return True
        name = self.account_of(username)
        local, at, domain = name.rpartition("@")
        if not at:
            return name in self._local_parts or self._any_domain
        return name in self._accounts or f"@{domain}" in self._accounts

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
