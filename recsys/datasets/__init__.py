"""Datasets: registry, converters to RecBole atomic files, and the prepare step."""

from __future__ import annotations

from pathlib import Path

from recsys.config import DataConfig
from recsys.datasets.atomic import AtomicDataset, is_complete, read_arrays, read_items, write_atomic
from recsys.datasets.converters import CONVERTERS, CsvFormatError, from_user_csv, ml_100k_embedded
from recsys.datasets.registry import DatasetError, default_mirror, get_spec, load_registry, raw_dir

__all__ = [
    "AtomicDataset",
    "CsvFormatError",
    "DatasetError",
    "atomic_dir",
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


def import_csv(path: Path, name: str, data: DataConfig) -> Path:
    """Convert a user's CSV into ``data.workdir/<name>`` atomic files."""
    if name in load_registry():
        raise DatasetError(f"dataset name '{name}' is taken by a registered dataset")
    if not Path(path).is_file():
        raise DatasetError(f"CSV file not found: {path}")
    return write_atomic(from_user_csv(Path(path), name), atomic_dir(name, data))
