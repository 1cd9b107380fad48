"""mailproxy: a transparent SMTP filtering proxy with pluggy policy hooks.

The public API for plugin authors is what this module exports.
"""

from .plugins import PluginContext, PluginSettings, hookimpl
from .session import Envelope, Session
from .verdict import Action, Reply, Verdict

__all__ = [
    "Action",
    "Envelope",
    "PluginContext",
    "PluginSettings",
    "Reply",
    "Session",
    "Verdict",
    "hookimpl",
]
__version__ = "0.1.0"
