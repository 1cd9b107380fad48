"""A drop-in plugin for tests: at MAIL, scores the symbols configured for the sender's
local part, all in one answer (a list of verdicts)."""

from mailproxy import PluginSettings, Verdict, hookimpl


class Plugin:
    class Config(PluginSettings):
        # local part -> {symbol: points}
        senders: dict[str, dict[str, float]] = {}

    def __init__(self, settings, context):
        self.senders = settings.senders

    @hookimpl
    def smtp_mail(self, address):
        symbols = self.senders.get(address.partition("@")[0], {})
        return [Verdict.score(symbol, points) for symbol, points in symbols.items()]
