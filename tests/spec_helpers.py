"""Helpers for tests that write pipeline specs (importable from every test folder: pytest puts
``tests/`` on ``sys.path`` for its conftest)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


def write_spec(tmp_path: Path, spec: dict[str, Any]) -> Path:
    """``spec`` written as ``tmp_path/spec.yaml``."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


def spec_with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with the field at dotted ``path`` (list items by index) set to
    ``value``."""
    spec = copy.deepcopy(base)
    node: Any = spec
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec
