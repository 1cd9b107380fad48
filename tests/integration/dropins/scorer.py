"""A drop-in plugin for tests: scores the client at connect and HELO, and senders of
one domain at MAIL."""

from mailproxy import PluginSettings, Verdict, hookimpl


class Plugin:
    class Config(PluginSettings):
        connect_points: float = 0.0
        helo_points: float = 0.0
        sender_points: float = 0.0
        scored_domain: str = "scored.example"

    def __init__(self, settings, context):
        self.settings = settings

    @hookimpl
    def smtp_connect(self):
        return Verdict.score("CONNECT", self.settings.connect_points)

    @hookimpl
    def smtp_helo(self):
        return Verdict.score("HELO", self.settings.helo_points)

    @hookimpl
    def smtp_mail(self, address):
        if address.endswith("@" + self.settings.scored_domain):
            return Verdict.score("SENDER", self.settings.sender_points)
        return None
