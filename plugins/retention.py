"""retention: protected accounts may read their mail but not delete it, whatever the
client asks of the mail store.

    [plugin.retention]
    accounts = ["archive@example.test", "@legal.example.test"]   # or ["*"] for everyone

A login matches an entry that is the same address (compared without regard to case), a
"@domain" entry for every address in that domain, or "*". For such an account:

- POP3 `DELE` is refused with `-ERR Deletion is not permitted for this account`. A POP3
  server deletes only what DELE marked, at QUIT, so nothing is deleted.

Each refusal is counted in `mailproxy_plugin_checks_total{plugin="retention",
check="delete", result="refused"}`.
"""

from __future__ import annotations

import logging

from pydantic import field_validator

from mailproxy import PluginSettings, Session, Verdict, hookimpl

from ._common import count

PLUGIN = "retention"
TEXT = "Deletion is not permitted for this account"

log = logging.getLogger("mailproxy.plugin.retention")


class Plugin:
    class Config(PluginSettings):
        accounts: list[str] = []

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
        count(PLUGIN, "delete", "refused")
        log.info("refused DELE for %s", session.username)
        return Verdict.reject(text=TEXT)
