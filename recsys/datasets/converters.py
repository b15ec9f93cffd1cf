"""Converters from each real dataset's raw files to :class:`AtomicDataset`.

One function per registered dataset, listed in ``CONVERTERS``; plus :func:`from_user_csv` for a user's
own ``user,item,timestamp[,title][,text...]`` CSV and :func:`detect_protocol` for its timestamps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.datasets.atomic import AtomicDataset


def _order_inter(sequences: list[tuple[str, list[str]]]) -> pd.DataFrame:
    """Interactions of order-only data; ``timestamp`` = position in the user's sequence."""
    users, items, pos = [], [], []
    for user, seq in sequences:
        users.extend([user] * len(seq))
        items.extend(seq)
        pos.extend(range(len(seq)))
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": np.asarray(pos, dtype=float)})


def ml_100k(raw: Path) -> AtomicDataset:
    inter = pd.read_csv(raw / "u.data", sep="\t", names=["user_id", "item_id", "rating", "timestamp"], dtype=str)
    inter["timestamp"] = inter["timestamp"].astype(float)
    genres = [line.split("|")[0] for line in (raw / "u.genre").read_text().splitlines() if line.strip()]
    cols = ["item_id", "title", "release", "video", "url"] + genres
    raw_items = pd.read_csv(raw / "u.item", sep="|", names=cols, encoding="latin-1", dtype=str)
    flags = raw_items[genres].astype(int).to_numpy()
    title = raw_items["title"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True)
    year = raw_items["release"].fillna("").str[-4:]
    items = pd.DataFrame(
        {
            "item_id": raw_items["item_id"],
            "title": title,
            "genres": [", ".join(g for g, f in zip(genres, row) if f) for row in flags],
            "release_year": year,
        }
    )
    return AtomicDataset("ml-100k", inter[["user_id", "item_id", "timestamp"]], items)


def ml_100k_embedded(atomic_dir: Path) -> AtomicDataset:
    """The ml-100k atomic files shipped inside the recbole wheel (the offline default)."""
    inter = pd.read_csv(atomic_dir / "ml-100k.inter", sep="\t", dtype=str)
    inter.columns = [c.split(":")[0] for c in inter.columns]
    inter["timestamp"] = inter["timestamp"].astype(float)
    raw_items = pd.read_csv(atomic_dir / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    raw_items.columns = [c.split(":")[0] for c in raw_items.columns]
    items = pd.DataFrame(
        {
            "item_id": raw_items["item_id"],
            "title": raw_items["movie_title"],
            "genres": raw_items["class"].str.replace(" ", ", "),
            "release_year": raw_items["release_year"],
        }
    )
    return AtomicDataset("ml-100k", inter[["user_id", "item_id", "timestamp"]], items)


def ml_latest_small(raw: Path) -> AtomicDataset:
    inter = pd.read_csv(raw / "ratings.csv", dtype=str).rename(columns={"userId": "user_id", "movieId": "item_id"})
    inter["timestamp"] = inter["timestamp"].astype(float)
    movies = pd.read_csv(raw / "movies.csv", dtype=str)
    tags = pd.read_csv(raw / "tags.csv", dtype=str, keep_default_na=False)
    tag_events = pd.DataFrame(  # user tags carry their time: read_items keeps those before a cutoff
        {
            "item_id": tags["movieId"],
            "field": "tags",
            "value": tags["tag"].str.strip().str.lower(),
            "timestamp": tags["timestamp"].astype(float),
        }
    )
    items = pd.DataFrame(
        {
            "item_id": movies["movieId"],
            "title": movies["title"],
            "genres": movies["genres"].str.replace("|", ", ", regex=False).replace("(no genres listed)", ""),
        }
    )
    return AtomicDataset("ml-latest-small", inter[["user_id", "item_id", "timestamp"]], items, item_events=tag_events)


def amazon_beauty(raw: Path) -> AtomicDataset:
    sequences = []
    for line in (raw / "user_sequence.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            sequences.append((parts[0], parts[1:]))
    asin_to_int = json.loads((raw / "item_id_to_int.json").read_text())
    lookup = pd.read_csv(raw / "products_lookup.csv", index_col=0, dtype={"global_product_id": int, "name": str})
    names = dict(zip(lookup["global_product_id"], lookup["name"]))
    used = sorted({item for _, seq in sequences for item in seq})
    missing = [a for a in used if a not in asin_to_int or asin_to_int[a] not in names]
    if missing:
        raise ValueError(f"amazon-beauty: {len(missing)} items without a title, e.g. {missing[0]}")
    items = pd.DataFrame({"item_id": used, "title": [names[asin_to_int[a]] for a in used]})
    return AtomicDataset("amazon-beauty", _order_inter(sequences), items)


def amazon_scientific(raw: Path) -> AtomicDataset:
    index = pd.read_csv(raw / "Scientific.item2index", sep="\t", names=["asin", "idx"], dtype={"asin": str})
    asin_of = dict(zip(index["idx"], index["asin"]))
    test = pd.read_csv(raw / "Scientific.test.inter", sep="\t", dtype=str)
    test.columns = [c.split(":")[0] for c in test.columns]
    sequences = [
        (user, [asin_of[int(i)] for i in hist.split()] + [asin_of[int(target)]])
        for user, hist, target in zip(test["user_id"], test["item_id_list"], test["item_id"])
    ]
    text = pd.read_csv(raw / "Scientific.text", sep="\t", dtype=str, keep_default_na=False, quoting=3)
    text.columns = [c.split(":")[0] for c in text.columns]
    text_of = dict(zip(text["item_id"], text["text"]))
    order = index.sort_values("idx")
    items = pd.DataFrame({"item_id": order["asin"], "title": [text_of.get(a, "") for a in order["asin"]]})
    n = len(index)
    feats = {}
    for key, fname in (("text_features", "Scientific.feat1CLS"), ("image_features", "Scientific.feat3CLS")):
        arr = np.fromfile(raw / fname, dtype=np.float32)
        if arr.size != n * 512:
            raise ValueError(f"amazon-scientific: {fname} holds {arr.size} floats, expected {n} x 512")
        feats[key] = arr.reshape(n, 512)[order["idx"].to_numpy()]
    return AtomicDataset("amazon-scientific", _order_inter(sequences), items, feats)


CONVERTERS: dict[str, Callable[[Path], AtomicDataset]] = {
    "ml-100k": ml_100k,
    "ml-latest-small": ml_latest_small,
    "amazon-beauty": amazon_beauty,
    "amazon-scientific": amazon_scientific,
}


class CsvFormatError(ValueError):
    """A user CSV that cannot be converted; the message names the column or line."""


CSV_COLUMNS = ("user", "item", "timestamp")  # required, matched case-insensitively
TITLE_COLUMN = "title"  # optional: the item's display title (and the head of its LLM text)


def from_user_csv(path: Path, name: str, text_columns: list[str] | None = None) -> AtomicDataset:
    """Convert ``user,item,timestamp[,title][,text...]`` (header required) to an :class:`AtomicDataset`.

    Header names are trimmed; ``user``, ``item``, ``timestamp`` and ``title`` match in any case.
    Text columns (default: every other column) become item text fields, the first non-empty value per
    item winning; ``title`` comes first. Without a ``title`` column an item's title is its id.
    """
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CsvFormatError(f"{path}: not a readable CSV ({exc})") from exc
    except pd.errors.EmptyDataError as exc:
        raise CsvFormatError(f"{path}: empty file") from exc
    special = {*CSV_COLUMNS, TITLE_COLUMN}
    names = [str(c).strip() for c in df.columns]
    names = [n.lower() if n.lower() in special else n for n in names]
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise CsvFormatError(f"{path}: column '{sorted(seen)[0]}' appears more than once in the header")
    df.columns = names
    for col in CSV_COLUMNS:
        if col not in df.columns:
            raise CsvFormatError(f"{path}: missing column '{col}' (need user,item,timestamp[,title][,text...])")
    if df.empty:
        raise CsvFormatError(f"{path}: no rows")
    ts = pd.to_numeric(df["timestamp"], errors="coerce")
    bad = ts.isna() | ~np.isfinite(ts.to_numpy(dtype=float, na_value=np.nan))
    if bad.any():
        line = int(bad.to_numpy().argmax())
        raise CsvFormatError(f"{path}: column 'timestamp' line {line + 2}: not a number: {df['timestamp'][line]!r} "
                             "(timestamps are numbers: epoch seconds, or positions 0,1,2,... within each user)")
    for col in ("user", "item"):
        empty = df[col].str.strip() == ""
        if empty.any():
            raise CsvFormatError(f"{path}: column '{col}' line {int(empty.to_numpy().argmax()) + 2}: empty value")
    if df["user"].value_counts().max() < 2:
        raise CsvFormatError(f"{path}: no user has two or more interactions (a sequence needs at least two)")
    text_columns = text_columns or [c for c in df.columns if c not in CSV_COLUMNS]
    if TITLE_COLUMN in text_columns:
        text_columns = [TITLE_COLUMN] + [c for c in text_columns if c != TITLE_COLUMN]
    inter = pd.DataFrame({"user_id": df["user"], "item_id": df["item"], "timestamp": ts.astype(float)})
    items = df.groupby("item", sort=True)[text_columns].agg(lambda s: next((v for v in s if v.strip()), ""))
    items = items.reset_index().rename(columns={"item": "item_id"})
    if TITLE_COLUMN not in items.columns:
        items.insert(1, TITLE_COLUMN, items["item_id"])
    return AtomicDataset(name, inter, items)


def detect_protocol(inter: pd.DataFrame) -> tuple[str, str]:
    """``("order" | "shift", why)`` for interactions whose ``timestamp`` may be order positions, not times.

    The rule: the timestamps are per-user positions, so ``order`` (per-user leave-last-out), when every
    timestamp is a whole number, no user has two events at the same timestamp, and every user's first
    timestamp is the same origin, 0 or 1 (``0..n-1`` or ``1..n``; gaps, e.g. from dropped rows, allowed).
    A shared clock does not start every user at 0 or 1; on positions, a global split by "time" would
    cut by sequence length and leave the test set to the longest users. Anything else is ``shift``.
    """
    ts = inter["timestamp"].to_numpy(dtype=float)
    if not np.array_equal(ts, np.round(ts)):
        return "shift", "timestamps are not whole numbers: a clock"
    if inter.duplicated(["user_id", "timestamp"]).any():
        return "shift", "some user has two events at one timestamp: not positions"
    grouped = inter.groupby("user_id", sort=False)["timestamp"]
    first = grouped.min()
    origins = first.unique()
    if len(origins) != 1 or origins[0] not in (0.0, 1.0):
        return "shift", "users start at different timestamps: a shared time line"
    origin = int(origins[0])
    exact = bool(((grouped.max() - first + 1) == grouped.size()).all())
    shape = f"exactly {origin}..n{'-1' if origin == 0 else ''}" if exact else f"counted from {origin}, with gaps"
    return "order", f"every user's timestamps are positions {shape}, not times"
