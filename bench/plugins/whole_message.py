"""A bench-only drop-in plugin: an `smtp_data` hook that does nothing.

mailproxy gives `smtp_data` hooks the whole message, so while any enabled plugin
implements that hook the proxy takes the whole message before it forwards it; with none,
it streams the message to the upstream as it arrives. Enabling this plugin selects the
whole-message mode at the price of one empty hook call per message, so what the bench
measures is the mode, not a plugin's work.
"""

from mailproxy import hookimpl


@hookimpl
def smtp_data() -> None:
    """No opinion: the message goes on unchanged."""
