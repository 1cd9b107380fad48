"""A drop-in plugin for tests: plain (non-async) hooks that block, or raise what an
`except Exception` does not catch, at the phase the config names."""

import asyncio
import sys
import time
from typing import Literal

from mailproxy import PluginSettings, Verdict, hookimpl


class Plugin:
    class Config(PluginSettings):
        connect: Literal["pass", "raise", "tempfail"] = "pass"
        sleep_sender: str = "sleep@test.example"
        sleep_seconds: float = 3.0
        exit_sender: str = "exit@test.example"
        cancel_sender: str = "cancel@test.example"

    def __init__(self, settings, context):
        self.settings = settings
        self.log = context.logger

    @hookimpl
    def smtp_connect(self):
        if self.settings.connect == "raise":
            raise RuntimeError("plugin bug at connect, on purpose")
        if self.settings.connect == "tempfail":
            return Verdict.tempfail(450, "4.7.1", "Come back later")
        return None

    @hookimpl
    def smtp_mail(self, address):
        settings = self.settings
        if address == settings.sleep_sender:
            self.log.info("unruly: sleeping %ss", settings.sleep_seconds)
            time.sleep(settings.sleep_seconds)
        elif address == settings.exit_sender:
            sys.exit("plugin calls sys.exit, on purpose")
        elif address == settings.cancel_sender:
            raise asyncio.CancelledError("raised by the plugin, on purpose")
        return None
