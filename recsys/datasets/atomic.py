"""Reading and writing RecBole atomic files (``.inter``, ``.item``) plus item-aligned side arrays."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.config import MANIFEST

COMPLETE_MARKER = ".complete"
FORMAT = "format 2"  # 2: timestamped item text (``.item_events``) instead of text aggregated over all time


@dataclass
class AtomicDataset:
    """One dataset in memory: interactions, item texts and optional item-aligned arrays.

    ``inter`` has columns user_id, item_id (str tokens) and timestamp (float; for order-only datasets
    it is the position within the user's sequence, not a time). ``items`` has item_id then text
    columns. ``arrays`` maps a name (e.g. ``image_features``) to a float32 matrix with one row per
    ``items`` row, in the same order. ``item_events`` (columns item_id, field, value, timestamp) holds
    item text that arrives over time (ml-latest-small's user tags): :func:`read_items` joins the values
    known by a cutoff into the item table's ``field`` column, so no text from after the training period
    reaches the item context.
    """

    name: str
    inter: pd.DataFrame
    items: pd.DataFrame
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    item_events: pd.DataFrame | None = None

    def validate(self) -> None:
        missing = set(self.inter["item_id"]) - set(self.items["item_id"])
        if missing:
            raise ValueError(f"{self.name}: {len(missing)} interacted items have no .item row")
        for key, arr in self.arrays.items():
            if arr.shape[0] != len(self.items):
                raise ValueError(f"{self.name}: array {key} has {arr.shape[0]} rows for {len(self.items)} items")


def _clean(text: object) -> str:
    return " ".join(str(text).replace("\t", " ").split()) if isinstance(text, str) else ""


def write_atomic(ds: AtomicDataset, out_dir: Path, manifest: dict | None = None) -> Path:
    """Write ``ds`` to ``out_dir`` atomically (temp dir, then rename); returns ``out_dir``.

    ``manifest`` (how the data was imported: its protocol, see :func:`recsys.config.read_manifest`) is
    written as :data:`recsys.config.MANIFEST` inside the same directory, so it appears with the files.
    """
    ds.validate()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ds.name}-", dir=out_dir.parent))
    try:
        inter = ds.inter[["user_id", "item_id", "timestamp"]].copy()
        inter.columns = ["user_id:token", "item_id:token", "timestamp:float"]
        inter.to_csv(tmp / f"{ds.name}.inter", sep="\t", index=False)
        items = ds.items.copy()
        for col in items.columns[1:]:
            items[col] = items[col].map(_clean)
        items.columns = ["item_id:token"] + [f"{c}:token_seq" for c in items.columns[1:]]
        items.to_csv(tmp / f"{ds.name}.item", sep="\t", index=False)
        for key, arr in ds.arrays.items():
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(arr, dtype=np.float32))
        if ds.item_events is not None:
            events = ds.item_events[["item_id", "field", "value", "timestamp"]].copy()
            events["value"] = events["value"].map(_clean)
            events.to_csv(tmp / f"{ds.name}.item_events", sep="\t", index=False)
        if manifest is not None:
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / COMPLETE_MARKER).write_text(FORMAT + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def is_complete(out_dir: Path, current: bool = False) -> bool:
    """Whether ``out_dir`` holds a complete conversion (``current``: written in today's :data:`FORMAT`)."""
    marker = out_dir / COMPLETE_MARKER
    return marker.is_file() and (not current or marker.read_text().strip() == FORMAT)


def read_items(out_dir: Path, name: str, cutoff: float | None = None) -> pd.DataFrame:
    """The ``.item`` table with plain column names (``item_id``, ``title``, ...), all strings.

    Timestamped item text (``.item_events``) becomes a column per field: the distinct values with
    ``timestamp <= cutoff`` (every value when ``cutoff`` is None), in time order, joined by ", ".
    """
    path = out_dir / f"{name}.item"
    if not path.is_file():
        raise FileNotFoundError(f"missing item file {path}")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    df.columns = [c.split(":")[0] for c in df.columns]
    events_path = out_dir / f"{name}.item_events"
    if events_path.is_file():
        ev = pd.read_csv(events_path, sep="\t", dtype={"item_id": str, "field": str, "value": str},
                         keep_default_na=False, quoting=3)
        if cutoff is not None:
            ev = ev[ev["timestamp"].astype(float) <= cutoff]
        ev = ev.sort_values("timestamp", kind="stable").drop_duplicates(["item_id", "field", "value"])
        for name_, group in ev.groupby("field", sort=True):
            joined = group.groupby("item_id", sort=False)["value"].agg(", ".join)
            df[name_] = df["item_id"].map(joined).fillna("")
    return df


def counts(out_dir: Path, name: str) -> tuple[int, int, int]:
    """Users, items with interactions, and interactions of the ``.inter`` file in ``out_dir``."""
    inter = pd.read_csv(out_dir / f"{name}.inter", sep="\t", dtype=str, usecols=[0, 1])
    return int(inter.iloc[:, 0].nunique()), int(inter.iloc[:, 1].nunique()), len(inter)


def read_arrays(out_dir: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted(out_dir.glob("*.npy"))}
