"""Where a plugin under test comes from, and the configuration it is loaded with.

A test names its plugin the way that suits it: the module or class it imported, the
path of a drop-in file, or the name of an installed plugin (an entry point in the group
`mailproxy`). Both the scripted session and the real proxy take any of them; this module
turns them into what the proxy's own loader needs: a name, and a drop-in directory
unless the plugin is installed.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from ..config import Config, ConfigError, describe_validation_error
from ..plugins import ENTRY_POINT_GROUP

HOSTNAME = "proxy.test"  # the proxy's name in its own replies, unless a test says otherwise
LOCAL_DOMAINS = ("example.test",)  # what an mx listener accepts mail for


@dataclass(frozen=True)
class Located:
    name: str  # the plugin's name: its [plugin.NAME] section, metric labels, the logs
    directory: Path | None  # the drop-in directory holding it, if it is a drop-in file
    target: ModuleType | type | None  # what the test imported itself, if it did
    installed: bool = False  # an entry point in the group `mailproxy` names it


def _entry_point_name(module: str) -> str | None:
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.module == module:
            return entry_point.name
    return None


def locate(plugin: Any) -> Located:
    """A module or class (installed or not), a drop-in file's path, or an installed
    plugin's name."""
    if isinstance(plugin, os.PathLike) or (isinstance(plugin, str) and plugin.endswith(".py")):
        path = Path(plugin)
        if path.suffix != ".py" or not path.is_file():
            raise ConfigError(f"{path}: no such plugin file (a drop-in plugin is one *.py file)")
        return Located(path.stem, path.resolve().parent, None)
    if isinstance(plugin, str):
        names = sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        if plugin not in names:
            raise ConfigError(
                f"no installed plugin named {plugin!r} (installed: {', '.join(names) or 'none'}); "
                "a drop-in plugin is given as the path of its file"
            )
        return Located(plugin, None, None, installed=True)
    if isinstance(plugin, (ModuleType, type)):
        module = plugin.__name__ if isinstance(plugin, ModuleType) else plugin.__module__
        installed = _entry_point_name(module)
        if installed is not None:
            return Located(installed, None, plugin, installed=True)
        try:
            source = Path(inspect.getfile(plugin))
        except (OSError, TypeError):  # defined where there is no file, such as `python -c`
            source = None
        if source is not None and source.suffix == ".py" and source.name != "__init__.py":
            return Located(source.stem, source.parent, plugin)  # as a drop-in, named after its file
        return Located(module.rpartition(".")[2], None, plugin)
    raise TypeError(
        f"cannot load {plugin!r} as a plugin: pass a module, a class, an instance, the path of a "
        "drop-in file or the name of an installed plugin"
    )


def config_for(
    located: Located,
    options: dict[str, Any] | None,
    *,
    mode: str,
    hostname: str,
    local_domains: tuple[str, ...] | list[str],
    listen: str,
    upstream: str,
    policy: dict[str, Any] | None,
    listener: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A whole configuration, as nested dicts, with this one plugin enabled: one
    listener of `mode` in front of one upstream."""
    config: dict[str, Any] = {
        "proxy": {"hostname": hostname, "resolve_client_names": False},
        "upstreams": {"upstream": {"address": upstream}},
        "listeners": [{
            "name": mode,
            "mode": mode,
            "address": listen,
            "upstream": "upstream",
            "local_domains": list(local_domains),
            **(listener or {}),
        }],
        "plugins": {
            "enabled": [located.name],
            "directories": [str(located.directory)] if located.directory else [],
        },
        "plugin": {located.name: dict(options or {})},
        "policy": dict(policy or {}),
    }
    return merge_sections(config, extra or {})


def merge_sections(config: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`config` with the sections of `extra` added; a table's keys are merged, the
    keys of `extra` winning."""
    merged = dict(config)
    for section, settings in extra.items():
        current = merged.get(section)
        both_tables = isinstance(settings, dict) and isinstance(current, dict)
        merged[section] = {**current, **settings} if both_tables else settings
    return merged


def validated(config: dict[str, Any], source: str = "config") -> Config:
    """The configuration checked as `mailproxy check` checks it."""
    try:
        return Config.model_validate(config)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(source, exc)) from None
