"""A drop-in plugin for tests: refuses IMAP DELETE, and logs every command it is shown
(one `imap_guard saw ...` line each), so a test can tell what reached the hook."""

import logging

from mailproxy import PluginSettings, Verdict, hookimpl

log = logging.getLogger("mailproxy.plugin.imap_guard")


class Plugin:
    class Config(PluginSettings):
        pass

    def __init__(self, settings, context):
        pass

    @hookimpl
    def imap_command(self, tag, verb, args):
        log.info("imap_guard saw %s %s %r", tag, verb, args)
        if verb == "DELETE":
            return Verdict.reject(text="DELETE refused by imap_guard")
        return None
