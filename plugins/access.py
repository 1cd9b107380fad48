"""access: allow or deny by client network, HELO name, sender and recipient.

    [plugin.access]
    allow_clients = ["10.0.0.0/8"]      # trusted: the deny rules below are skipped
    deny_clients = ["192.0.2.0/24"]     # refused at connect (554 5.7.1)
    deny_helo = ["*.invalid", "localhost"]
    deny_senders = ["*@spam.example"]   # refused at MAIL (550 5.7.1)
    deny_recipients = ["abuse-test@*"]  # refused at RCPT (550 5.7.1)

Patterns are shell-style globs (`*`, `?`, `[...]`), matched without regard to case.
The null sender `<>` is matched as the empty string.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re

from pydantic import field_validator

from mailproxy import PluginSettings, Session, Verdict, hookimpl

from ._common import networks

_ALLOWED = "access.allowed"


class Plugin:
    class Config(PluginSettings):
        allow_clients: list[str] = []
        deny_clients: list[str] = []
        deny_helo: list[str] = []
        deny_senders: list[str] = []
        deny_recipients: list[str] = []

        @field_validator("allow_clients", "deny_clients")
        @classmethod
        def _networks(cls, values: list[str]) -> list[str]:
            return networks(values)

    def __init__(self, settings: Config, context) -> None:
        self._allow = [ipaddress.ip_network(n, strict=False) for n in settings.allow_clients]
        self._deny = [ipaddress.ip_network(n, strict=False) for n in settings.deny_clients]
        self._helo = _globs(settings.deny_helo)
        self._senders = _globs(settings.deny_senders)
        self._recipients = _globs(settings.deny_recipients)

    @staticmethod
    def _in(address: str, networks: list) -> bool:
        if not networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    @hookimpl
    def smtp_connect(self, session: Session) -> Verdict | None:
        if self._in(session.client_address, self._allow):
            session.notes[_ALLOWED] = True
            return None
        if self._in(session.client_address, self._deny):
            return Verdict.reject(554, "5.7.1", "Access denied")
        return None

    @staticmethod
    def _refuse(session: Session, pattern: re.Pattern | None, value: str, text: str) -> Verdict | None:
        if pattern is not None and not session.notes.get(_ALLOWED) and pattern.match(value):
            return Verdict.reject(550, "5.7.1", text)
        return None

    @hookimpl
    def smtp_helo(self, session: Session, hostname: str) -> Verdict | None:
        return self._refuse(session, self._helo, hostname, "HELO name rejected")

    @hookimpl
    def smtp_mail(self, session: Session, address: str) -> Verdict | None:
        return self._refuse(session, self._senders, address, "Sender address rejected")

    @hookimpl
    def smtp_rcpt(self, session: Session, address: str) -> Verdict | None:
        return self._refuse(session, self._recipients, address, "Recipient address rejected")


def _globs(patterns: list[str]) -> re.Pattern | None:
    """All patterns as one case-insensitive regular expression (one match per check)."""
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns), re.IGNORECASE)
