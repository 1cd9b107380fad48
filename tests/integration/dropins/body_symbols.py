"""A drop-in plugin for tests: an `smtp_data` hook that scores a message containing a
word, so the score is final only after the data hooks."""

from mailproxy import PluginSettings, Verdict, hookimpl


class Plugin:
    class Config(PluginSettings):
        word: str = "lottery"
        symbol: str = "BODY_LOTTERY"
        points: float = 5.0

    def __init__(self, settings, context):
        self.settings = settings

    @hookimpl
    def smtp_data(self, message):
        if self.settings.word.encode() in message:
            return Verdict.score(self.settings.symbol, self.settings.points)
        return None
