"""A drop-in plugin for tests: misbehaves on purpose, at the phase the config names."""

import asyncio
from typing import Literal

from mailproxy import PluginSettings, Verdict, hookimpl


class Plugin:
    class Config(PluginSettings):
        raise_on_sender: str = "raise@test.example"
        hang_on_sender: str = "hang@test.example"
        reject_sender: str = "reject@test.example"
        reject_content: str = "X-Reject-Me"
        action: Literal["reject", "score"] = "reject"

    def __init__(self, settings, context):
        self.settings = settings

    @hookimpl
    async def smtp_mail(self, address):
        if address == self.settings.raise_on_sender:
            raise RuntimeError("plugin bug, on purpose")
        if address == self.settings.hang_on_sender:
            await asyncio.sleep(3600)
        if address == self.settings.reject_sender:
            return Verdict.reject(550, "5.7.1", "Rejected by the faulty test plugin")
        return None

    @hookimpl
    def smtp_data(self, envelope, message):
        if self.settings.reject_content.encode() in message:
            return Verdict.reject(554, "5.7.1", "Content rejected by the faulty test plugin")
        envelope.add_header("X-Faulty-Seen", str(len(message)))
        return None
