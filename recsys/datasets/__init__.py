"""Datasets: registry, converters to RecBole atomic files, and the prepare step."""

from __future__ import annotations

from pathlib import Path

from recsys.config import DataConfig
from recsys.datasets.atomic import AtomicDataset, counts, is_complete, read_arrays, read_items, write_atomic
from recsys.datasets.converters import CONVERTERS, CsvFormatError, detect_protocol, from_user_csv, ml_100k_embedded
from recsys.datasets.registry import DatasetError, default_mirror, get_spec, load_registry, raw_dir

__all__ = [
    "AtomicDataset",
    "CsvFormatError",
    "DatasetError",
    "atomic_dir",
    "counts",
    "detect_protocol",
    "import_csv",
    "load_registry",
    "prepare",
    "read_arrays",
    "read_items",
]


def atomic_dir(name: str, data: DataConfig) -> Path:
    return Path(data.workdir) / name


def _embedded_dir(rel: str) -> Path:
    import recbole

    return Path(recbole.__file__).resolve().parents[1] / rel


def prepare(name: str, data: DataConfig, force: bool = False) -> Path:
    """Make sure ``data.workdir/<name>`` holds the dataset's atomic files; returns that directory.

    Registered datasets are converted from the mirror (or downloaded when ``data.download``); ml-100k
    falls back to the copy inside the recbole wheel when no mirror is configured. A dataset imported
    from a user CSV is accepted when its atomic files are already there.
    """
    out = atomic_dir(name, data)
    registry = load_registry()
    if name not in registry:
        if is_complete(out):
            return out
        raise DatasetError(f"unknown dataset '{name}' (known: {', '.join(sorted(registry))}; or import a CSV)")
    if is_complete(out, current=True) and not force:
        return out
    spec = get_spec(name)
    explicit_mirror = data.mirror is not None
    try:
        raw = raw_dir(spec, data.mirror, data.download, Path(data.workdir).parent / "downloads")
        dataset = CONVERTERS[name](raw)
    except DatasetError:
        if spec.embedded and not explicit_mirror and default_mirror() is None:
            dataset = ml_100k_embedded(_embedded_dir(spec.embedded))
        else:
            raise
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{name}: conversion failed: {exc}") from exc
    return write_atomic(dataset, out)


def import_csv(path: Path, name: str, data: DataConfig, protocol: str | None = None) -> Path:
    """Convert a user's CSV into ``data.workdir/<name>`` atomic files plus their manifest.

    The manifest (:data:`recsys.config.MANIFEST`) records the protocol: ``protocol`` when given, else
    the one :func:`detect_protocol` finds in the timestamps; every later config of ``dataset=<name>``
    picks it up (:func:`recsys.config.load_config`).
    """
    if name in load_registry():
        raise DatasetError(f"dataset name '{name}' is taken by a registered dataset")
    if protocol not in (None, "shift", "order"):
        raise DatasetError(f"unknown protocol '{protocol}' (shift | order)")
    if not Path(path).is_file():
        raise DatasetError(f"CSV file not found: {path}")
    dataset = from_user_csv(Path(path), name)
    detected, why = detect_protocol(dataset.inter)
    manifest = {
        "name": name,
        "source": "csv",
        "csv": str(Path(path).resolve()),
        "protocol": protocol or detected,
        "protocol_source": "given" if protocol else "detected",
        "detected": {"protocol": detected, "why": why},
        "titles_are_ids": bool(dataset.items["title"].equals(dataset.items["item_id"])),  # no title column
        "users": int(dataset.inter["user_id"].nunique()),
        "items": int(dataset.inter["item_id"].nunique()),
        "interactions": len(dataset.inter),
    }
    return write_atomic(dataset, atomic_dir(name, data), manifest)
