"""Write a configuration given as nested dicts as TOML, for `mailproxy run -c`.

Python reads TOML (`tomllib`) but does not write it. This writes what a mailproxy
configuration holds: tables and sub-tables at any depth, arrays of tables
(`[[listeners]]`), and values that are strings, paths, booleans, numbers, lists and
inline tables. Keys that are not bare TOML keys (`alice@example.org`) are quoted.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import PurePath
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _string(name)


def _string(text: str) -> str:
    # A JSON string is a TOML basic string, except that TOML wants DEL escaped too.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def value(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if math.isnan(item):
            return "nan"
        return repr(item) if math.isfinite(item) else ("inf" if item > 0 else "-inf")
    if isinstance(item, (str, PurePath)):
        return _string(str(item))
    if isinstance(item, (list, tuple)):
        return "[" + ", ".join(value(v) for v in item) + "]"
    if isinstance(item, dict):
        return "{" + ", ".join(f"{key(k)} = {value(v)}" for k, v in item.items()) + "}"
    raise TypeError(f"cannot write {item!r} as TOML")


def _is_table_array(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and bool(item) and all(isinstance(v, dict) for v in item)


def to_toml(config: dict[str, Any]) -> str:
    """`config` as a TOML document; `tomllib.loads` of it gives `config` back."""
    lines: list[str] = []

    def table(path: list[str], body: dict[str, Any], header: str | None) -> None:
        if header is not None:
            lines.append(header)
        nested = []
        for name, item in body.items():
            if isinstance(item, dict) or _is_table_array(item):
                nested.append((name, item))
            else:
                lines.append(f"{key(name)} = {value(item)}")
        lines.append("")
        for name, item in nested:
            inner = [*path, key(name)]
            if isinstance(item, dict):
                table(inner, item, f"[{'.'.join(inner)}]")
            else:
                for element in item:
                    table(inner, element, f"[[{'.'.join(inner)}]]")

    table([], config, None)
    return "\n".join(lines).lstrip("\n")
