"""A drop-in plugin for tests: an `smtp_data` hook that reads the message and says so in
a header, so the proxy keeps the unstuffed message that data hooks read."""

from mailproxy import hookimpl


class Plugin:
    def __init__(self, settings, context):
        pass

    @hookimpl
    def smtp_data(self, envelope, message):
        envelope.add_header("X-Tagged", f"{len(message)} bytes")
