"""A drop-in plugin for tests: scores the client at connect, and nothing else, so no
transaction hook holds the score against the thresholds before DATA."""

from mailproxy import PluginSettings, Verdict, hookimpl


class Plugin:
    class Config(PluginSettings):
        symbol: str = "CLIENT_LISTED"
        points: float = 6.0

    def __init__(self, settings, context):
        self.settings = settings

    @hookimpl
    def smtp_connect(self):
        return Verdict.score(self.settings.symbol, self.settings.points)
