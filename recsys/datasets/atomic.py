"""Reading and writing RecBole atomic files (``.inter``, ``.item``) plus item-aligned side arrays."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

COMPLETE_MARKER = ".complete"


@dataclass
class AtomicDataset:
    """One dataset in memory: interactions, item texts and optional item-aligned arrays.

    ``inter`` has columns user_id, item_id (str tokens) and timestamp (float; for order-only datasets
    it is the position within the user's sequence, not a time). ``items`` has item_id then text
    columns. ``arrays`` maps a name (e.g. ``image_features``) to a float32 matrix with one row per
    ``items`` row, in the same order.
    """

    name: str
    inter: pd.DataFrame
    items: pd.DataFrame
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def validate(self) -> None:
        missing = set(self.inter["item_id"]) - set(self.items["item_id"])
        if missing:
            raise ValueError(f"{self.name}: {len(missing)} interacted items have no .item row")
        for key, arr in self.arrays.items():
            if arr.shape[0] != len(self.items):
                raise ValueError(f"{self.name}: array {key} has {arr.shape[0]} rows for {len(self.items)} items")


def _clean(text: object) -> str:
    return " ".join(str(text).replace("\t", " ").split()) if isinstance(text, str) else ""


def write_atomic(ds: AtomicDataset, out_dir: Path) -> Path:
    """Write ``ds`` to ``out_dir`` atomically (temp dir, then rename); returns ``out_dir``."""
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
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def is_complete(out_dir: Path) -> bool:
    return (out_dir / COMPLETE_MARKER).is_file()


def read_items(out_dir: Path, name: str) -> pd.DataFrame:
    """The ``.item`` table with plain column names (``item_id``, ``title``, ...), all strings."""
    path = out_dir / f"{name}.item"
    if not path.is_file():
        raise FileNotFoundError(f"missing item file {path}")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def read_arrays(out_dir: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted(out_dir.glob("*.npy"))}
