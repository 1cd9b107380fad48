"""sender_login: a user who logged in sends only as themselves.

A mailproxy plugin in its own package, written against mailproxy's public API only
(`from mailproxy import ...`), as a third party writes one. Installed with pip, it
registers itself under the entry point `sender_login` in the group `mailproxy`:

    pip install ./plugins/examples/sender_login

    [plugins]
    enabled = ["sender_login"]

    [plugin.sender_login]
    aliases = { "alice@example.org" = ["sales@example.org", "*@alice.example.org"] }
    null_sender = true

It does what Postfix's reject_sender_login_mismatch does, for a proxy in front of a
server that does not: in a session that authenticated, MAIL FROM must be the login
itself or one of its `aliases` (shell-style patterns), compared without letter case,
else `553 5.7.1`. The null sender (bounces) is allowed unless `null_sender = false`.
Sessions that did not authenticate are not its business.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from mailproxy import PluginSettings, Session, Verdict, hookimpl


class Plugin:
    class Config(PluginSettings):
        aliases: dict[str, list[str]] = {}  # login -> further sender addresses or patterns
        null_sender: bool = True

    def __init__(self, settings: Config, context) -> None:
        self._aliases = {
            login.lower(): [pattern.lower() for pattern in patterns] for login, patterns in settings.aliases.items()
        }
        self._null_sender = settings.null_sender

    @hookimpl
    def smtp_mail(self, session: Session, address: str) -> Verdict | None:
        if not session.authenticated or self._may_send_as(session.username or "", address):
            return None
        # The login is not repeated: decoded from AUTH, it may hold any character, line ends too.
        return Verdict.reject(553, "5.7.1", f"<{address}>: Sender address rejected: not owned by the logged-in user")

    def _may_send_as(self, login: str, address: str) -> bool:
        if address == "":
            return self._null_sender
        login, address = login.lower(), address.lower()
        return address == login or any(fnmatchcase(address, pattern) for pattern in self._aliases.get(login, ()))
