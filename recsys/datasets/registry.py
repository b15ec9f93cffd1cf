"""The dataset registry (``data/registry.yaml``): sources, checksums, licences; mirror lookup and downloads."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from recsys.config import PROJECT_ROOT

REGISTRY_PATH = PROJECT_ROOT / "data" / "registry.yaml"


class DatasetError(RuntimeError):
    """A dataset problem with a one-line message naming the dataset or file."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    protocol: str
    timestamps: bool
    text_fields: list[str]
    licence: str
    files: dict[str, str | None]
    url: str | None = None
    archive_dir: str | None = None
    embedded: str | None = None
    source: str | None = None
    extra: dict = field(default_factory=dict)


def load_registry(path: Path = REGISTRY_PATH) -> dict[str, DatasetSpec]:
    raw = yaml.safe_load(path.read_text())
    known = set(DatasetSpec.__dataclass_fields__) - {"name", "extra"}
    return {
        name: DatasetSpec(
            name=name,
            **{k: v for k, v in spec.items() if k in known},
            extra={k: v for k, v in spec.items() if k not in known},
        )
        for name, spec in raw.items()
    }


def get_spec(name: str) -> DatasetSpec:
    registry = load_registry()
    if name not in registry:
        raise DatasetError(f"unknown dataset '{name}' (known: {', '.join(sorted(registry))})")
    return registry[name]


def default_mirror() -> Path | None:
    """``$PERSONA_DATA_MIRROR``, else ``../shared/data`` beside the project when it exists."""
    env = os.environ.get("PERSONA_DATA_MIRROR")
    if env:
        return Path(env)
    candidate = PROJECT_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_files(spec: DatasetSpec, directory: Path) -> None:
    """Every registered file exists and matches its md5 (``null`` = existence only)."""
    for fname, expected in spec.files.items():
        path = directory / fname
        if not path.is_file():
            raise DatasetError(f"{spec.name}: missing file {path}")
        if expected and md5sum(path) != expected:
            raise DatasetError(f"{spec.name}: corrupt file {path} (md5 mismatch, expected {expected})")


def raw_dir(spec: DatasetSpec, mirror: str | Path | None, download: bool, cache: Path) -> Path:
    """Locate (or download) the verified raw files of ``spec``."""
    mirror_path = Path(mirror) if mirror else default_mirror()
    if mirror_path is not None:
        if not mirror_path.is_dir():
            raise DatasetError(f"data mirror directory not found: {mirror_path}")
        candidate = mirror_path / spec.name
        if candidate.is_dir():
            verify_files(spec, candidate)
            return candidate
    if download and spec.url:
        return download_official(spec, cache)
    where = f"mirror {mirror_path}" if mirror_path else "no mirror (set PERSONA_DATA_MIRROR)"
    hint = " or pass data.download=true" if spec.url else ""
    raise DatasetError(f"{spec.name}: raw files not found ({where}){hint}")


def download_official(spec: DatasetSpec, cache: Path) -> Path:
    """Download the official archive, extract atomically and verify checksums."""
    target = cache / spec.name
    if target.is_dir():
        verify_files(spec, target)
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        archive = Path(tmp) / "archive.zip"
        try:
            urllib.request.urlretrieve(spec.url, archive)  # noqa: S310 - registry URL
        except OSError as exc:
            raise DatasetError(f"{spec.name}: download from {spec.url} failed: {exc}") from exc
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        except zipfile.BadZipFile as exc:
            raise DatasetError(f"{spec.name}: downloaded archive is corrupt: {exc}") from exc
        extracted = Path(tmp) / (spec.archive_dir or spec.name)
        verify_files(spec, extracted)
        shutil.move(str(extracted), target)
    return target
