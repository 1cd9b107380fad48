"""Find, configure and register plugins.

One registration path for every plugin, wherever it comes from:
  * entry points in the group `mailproxy` (the shipped plugins in plugins/ register
    this way too, exactly like a third-party package);
  * `*.py` files in the directories named by `[plugins] directories`.
A plugin is a module; if it defines a class named `Plugin`, that class is instantiated
with its validated settings (its nested `Config` model, a `PluginSettings` subclass) and
a `PluginContext`, and the instance is registered; otherwise the module's functions are.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Literal

import pluggy
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import hookspecs
from .config import Config, ConfigError, describe_validation_error
from .state import SharedState

ENTRY_POINT_GROUP = "mailproxy"
hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT)


class PluginSettings(BaseModel):
    """Keys every plugin section accepts; a plugin's `Config` adds its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    observe: bool = False  # log and count verdicts, never enforce them
    timeout: float = Field(5.0, gt=0, le=300)  # seconds per hook call
    # What a failed call (exception or timeout) means: refuse for now, refuse for good,
    # or carry on as if the plugin had no opinion.
    fail_mode: Literal["tempfail", "reject", "continue"] = "tempfail"
    # Run the plugin's plain (non-async) hooks in worker threads, so that one which
    # blocks (a synchronous database or DNS client) cannot stall the other sessions
    # past its timeout. Off by default: a fast plain hook is cheaper inline.
    blocking: bool = False


@dataclass(frozen=True)
class PluginContext:
    """What the proxy hands to each plugin instance."""

    state: SharedState
    config: Config
    logger: logging.Logger


@dataclass
class LoadedPlugin:
    name: str
    origin: str  # where it came from, for `mailproxy plugins`
    instance: Any
    settings: PluginSettings
    hooks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Source:
    origin: str
    load: Callable[[], ModuleType | type]


def discover(directories: list[Path]) -> dict[str, _Source]:
    """Every plugin that could be enabled, by name."""
    found: dict[str, _Source] = {}

    def add(name: str, source: _Source) -> None:
        if name in found:
            raise ConfigError(
                f"plugin {name!r} is defined twice: {found[name].origin} and {source.origin}"
            )
        found[name] = source

    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        add(ep.name, _Source(f"entry point {ep.value}", ep.load))
    for directory in directories:
        for path in sorted(directory.glob("*.py")):
            if not path.name.startswith("_"):
                add(path.stem, _Source(str(path), lambda p=path: _import_file(p)))
    return found


def _import_file(path: Path) -> ModuleType:
    module_name = f"mailproxy_dropin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def new_plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def instantiate(
    name: str, target: ModuleType | type, raw_settings: dict[str, Any], context: PluginContext
) -> tuple[Any, PluginSettings]:
    """Validate a plugin's section and build the object that gets registered."""
    plugin_class = target if isinstance(target, type) else getattr(target, "Plugin", None)
    model = getattr(plugin_class, "Config", PluginSettings) if plugin_class else PluginSettings
    if not (isinstance(model, type) and issubclass(model, PluginSettings)):
        raise ConfigError(f"plugin {name!r}: its Config must subclass PluginSettings")
    try:
        settings = model.model_validate(raw_settings)
    except ValidationError as exc:
        source = str(context.config.path or "config")
        text = describe_validation_error(source, exc)
        raise ConfigError(text.replace(f"{source}: ", f"{source}: plugin.{name}.")) from None
    if plugin_class is None:
        return target, settings
    return plugin_class(settings, context), settings


def register(
    manager: pluggy.PluginManager, name: str, origin: str, instance: Any, settings: PluginSettings
) -> LoadedPlugin:
    try:
        manager.register(instance, name=name)
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        manager.unregister(name=name)
        raise ConfigError(f"plugin {name!r} ({origin}): {exc}") from None
    hooks = [caller.name for caller in manager.get_hookcallers(instance) or []]
    return LoadedPlugin(name, origin, instance, settings, sorted(hooks))


def load_plugins(
    config: Config, context: PluginContext, manager: pluggy.PluginManager
) -> list[LoadedPlugin]:
    """Load, configure and register the enabled plugins, in the configured order."""
    available = discover(config.plugins.directories)
    loaded = []
    for name in config.plugins.enabled:
        source = available.get(name)
        if source is None:
            known = ", ".join(sorted(available)) or "none"
            raise ConfigError(
                f"{config.path}: plugins.enabled: unknown plugin {name!r} (available: {known})"
            )
        try:
            target = source.load()
        except Exception as exc:  # a broken plugin file must not print a traceback
            raise ConfigError(
                f"plugin {name!r} ({source.origin}) failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        instance, settings = instantiate(name, target, config.plugin.get(name, {}), context)
        loaded.append(register(manager, name, source.origin, instance, settings))
    return loaded
