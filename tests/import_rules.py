"""Helpers for the import tests: the top-level packages a file imports, and a subprocess preamble that refuses some."""

from __future__ import annotations

import ast
from pathlib import Path


def imports_of(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one Python file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def refusing(forbidden: tuple[str, ...]) -> str:
    """Python source that makes importing any of ``forbidden`` (top-level names) fail in that process."""
    return f"""
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {forbidden!r}:
            raise ImportError("no " + name + " on this device")
sys.meta_path.insert(0, Refuse())
"""
