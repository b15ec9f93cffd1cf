"""Preparing data: a registered dataset or a user CSV to RecBole atomic files, and what was prepared.

An imported CSV's protocol is detected from its timestamps (:func:`recsys.datasets.detect_protocol`)
unless it is given, and recorded with the files; :func:`summary` says what every later command sees.
"""

from __future__ import annotations

from pathlib import Path

from recipes.config import RecipeConfig
from recsys.config import CONFIG_DIR, read_manifest
from recsys.datasets import counts, import_csv

PROTOCOLS = {"shift": "global time split", "order": "per-user leave-last-out"}


def import_user_csv(csv: Path, name: str, cfg: RecipeConfig, protocol: str | None = None) -> Path:
    """Import ``csv`` as dataset ``name`` (``protocol`` None: detected); its atomic-file directory."""
    return import_csv(Path(csv), name, cfg.data, protocol=protocol)


def _protocol_source(cfg: RecipeConfig, name: str, manifest: dict | None, given: dict) -> str:
    """Where ``cfg.data.protocol`` came from, in a few words."""
    if manifest is not None and cfg.data.protocol == manifest["protocol"]:
        detected = manifest["detected"]
        if manifest["protocol_source"] == "detected":
            other = "shift" if detected["protocol"] == "order" else "order"
            return f"detected: {detected['why']}; --protocol {other} overrides"
        differs = detected["protocol"] != manifest["protocol"]
        return "given" + (f"; detected {detected['protocol']}: {detected['why']}" if differs else "")
    data = given.get("data")
    if isinstance(data, dict) and data.get("protocol") is not None:
        return "given: data.protocol" + (f", over the recorded {manifest['protocol']}" if manifest else "")
    return "dataset config" if (CONFIG_DIR / "datasets" / f"{name}.yaml").is_file() else "the default"


def summary(cfg: RecipeConfig, name: str, out: Path, given: dict) -> list[str]:
    """A few lines: counts, the protocol and where it came from, the split sizes (RecBole's, as training sees)."""
    from recsys.splits import load_split, split_sizes

    manifest = read_manifest(out)
    users, items, rows = counts(out, name)
    titles = ""
    if manifest is not None:
        titles = "; titles: the item ids (no 'title' column)" if manifest.get("titles_are_ids") else \
            "; titles from the 'title' column"
    protocol = cfg.data.protocol
    split = split_sizes(load_split(name, out.parent, cfg.data, cfg.eval))
    how = " ".join(f"{part} {n:,} rows / {u:,} users," for part, (n, u) in split.items()).rstrip(",")
    lines = [
        f"{name}: {users:,} users, {items:,} items, {rows:,} interactions in {out}{titles}",
        f"protocol: {protocol} ({PROTOCOLS[protocol]}; {_protocol_source(cfg, name, manifest, given)})",
        f"split: {how}",
    ]
    empty = [part for part, (n, _) in split.items() if n == 0]
    if empty:
        need = "users with 3+ interactions" if protocol == "order" else "more interactions"
        lines.append(f"warning: empty {' and '.join(empty)} split: training and evaluation need {need}")
    return lines
