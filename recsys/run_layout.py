"""The run-directory layout (every path under ``output_dir``) and the per-run ``manifest.json``.

::

    <output_dir>/<dataset>/codebook/                 semantic codebook, item embeddings, item_side.npz
    <output_dir>/<dataset>/<model>/seed<N>/          base checkpoint (model.pt, model.yaml, items.txt)
        manifest.json                                what the run produced (checkpoint, adapters, banks, …)
        adapter-<variant>/                           adapters (main, duet, no-xlayer, …)
        bank-<variant>/                              prototype banks (finetune, centre)
        prototypes.json                              the served bank's snapshot (device cache format)
        device/                                      persona export: the device's torch checkpoint
        device-onnx/                                 persona export --format onnx: the torch-free runtime's graphs

The manifest is the index the loaders read (:func:`read_manifest`); a run dir written before manifests
existed gets one derived from what is on disk (:func:`derive_manifest`). Plain paths only: this module
imports nothing above the standard library and :mod:`recsys.atomic_io`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from recsys.atomic_io import atomic_write_text

CODEBOOK_DIR = "codebook"
ITEM_SIDE_FILE = "item_side.npz"
ITEM_EMBEDDINGS_FILE = "item_embeddings.npy"
CHECKPOINT_MARK = "model.yaml"  # written last: the checkpoint is complete
ADAPTER_MARK = "adapter.yaml"
BANK_MARK = "bank.yaml"
PROTOTYPES_FILE = "prototypes.json"
ITEM_DELTA_FILE = "item-delta.json"  # the cloud's item rows for this checkpoint (llm_cloud.item_delta)
MANIFEST_FILE = "manifest.json"
DEVICE_DIR = "device"  # persona export: the device's copy of the checkpoint (item views folded in)
ONNX_DIR = "device-onnx"  # persona export --format onnx (and the onnx runtime's default serve.device.onnx_dir)
MAIN_ADAPTER = "main"  # the adapter the cloud serves
BANK_SEARCH_ORDER = ("finetune", "centre")  # the bank served beside an adapter: the first one present
MANIFEST_FORMAT = 1


def dataset_dir(output_dir: str | Path, dataset: str) -> Path:
    return Path(output_dir) / dataset


def seed_dir(output_dir: str | Path, dataset: str, model: str, seed: int) -> Path:
    """One trained base model's run dir (the checkpoint and everything built on it)."""
    return dataset_dir(output_dir, dataset) / model / f"seed{seed}"


def main_job_checkpoints(output_dir: str | Path, dataset: str, seeds: list[int]) -> list[Path]:
    """Every model's complete ``<output_dir>/<dataset>/<model>/seed<k>`` for k in ``seeds`` (the default teacher)."""
    root = dataset_dir(output_dir, dataset)
    models = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    dirs = [seed_dir(output_dir, dataset, m, k) for m in models for k in seeds]
    return [d for d in dirs if (d / CHECKPOINT_MARK).is_file()]


def item_delta_file(run: Path) -> Path:
    return Path(run) / ITEM_DELTA_FILE


def codebook_dir(output_dir: str | Path, dataset: str) -> Path:
    """Where ``persona codebook`` writes a dataset's codebook artifacts."""
    return dataset_dir(output_dir, dataset) / CODEBOOK_DIR


def item_side_file(output_dir: str | Path, dataset: str) -> Path:
    """The LLM item side file the device models read (``model_params.item_side``)."""
    return codebook_dir(output_dir, dataset) / ITEM_SIDE_FILE


def adapter_dir(run: Path, variant: str = MAIN_ADAPTER) -> Path:
    return Path(run) / f"adapter-{variant}"


def bank_dir(run: Path, variant: str) -> Path:
    return Path(run) / f"bank-{variant}"


def prototypes_file(run: Path) -> Path:
    return Path(run) / PROTOTYPES_FILE


def device_dir(run: Path) -> Path:
    return Path(run) / DEVICE_DIR


def onnx_dir(run: Path) -> Path:
    return Path(run) / ONNX_DIR


def manifest_file(run: Path) -> Path:
    return Path(run) / MANIFEST_FILE


def base_report_dir(reports_dir: str | Path, dataset: str) -> Path:
    """``reports/<dataset>/`` (base.*, adaptation-<model>.*)."""
    return Path(reports_dir) / dataset


def codebook_report_stem(reports_dir: str | Path, dataset: str) -> Path:
    """``reports/codebook/<dataset>`` (+ ``.json`` / ``.md``)."""
    return Path(reports_dir) / CODEBOOK_DIR / dataset


def digest(config: dict) -> str:
    """A short, stable digest of a config section (its JSON dump)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class Entry:
    """One artifact of a run: its path (relative to the run dir), config digest and write time."""

    path: str
    config_digest: str | None = None
    written: str | None = None


@dataclass
class Manifest:
    """What a run dir holds; ``derived`` when read off the files of a run without ``manifest.json``."""

    checkpoint: Entry | None = None
    adapters: dict[str, Entry] = field(default_factory=dict)
    banks: dict[str, Entry] = field(default_factory=dict)
    prototypes: Entry | None = None
    derived: bool = False

    def to_json(self) -> str:
        data = {"format": MANIFEST_FORMAT, **asdict(self)}
        del data["derived"]
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        one = lambda e: Entry(**e) if e else None
        return cls(one(raw.get("checkpoint")), {k: Entry(**e) for k, e in (raw.get("adapters") or {}).items()},
                   {k: Entry(**e) for k, e in (raw.get("banks") or {}).items()}, one(raw.get("prototypes")))

    def served_bank(self) -> str | None:
        """The bank variant served beside the adapters (:data:`BANK_SEARCH_ORDER`)."""
        return next((v for v in BANK_SEARCH_ORDER if v in self.banks), None)


def _variants(run: Path, prefix: str, mark: str) -> dict[str, Entry]:
    return {p.name.removeprefix(prefix): Entry(p.name) for p in sorted(run.glob(f"{prefix}*"))
            if (p / mark).is_file()}  # fmt: skip


def derive_manifest(run: Path) -> Manifest:
    """The manifest of a run dir written without one, from the complete artifacts on disk."""
    run = Path(run)
    return Manifest(
        checkpoint=Entry(".") if (run / CHECKPOINT_MARK).is_file() else None,
        adapters=_variants(run, "adapter-", ADAPTER_MARK),
        banks=_variants(run, "bank-", BANK_MARK),
        prototypes=Entry(PROTOTYPES_FILE) if prototypes_file(run).is_file() else None,
        derived=True,
    )


def read_manifest(run: Path) -> Manifest:
    """``manifest.json`` of ``run``, else one derived from what exists (old runs keep working)."""
    path = manifest_file(run)
    if path.is_file():
        return Manifest.from_json(path.read_text())
    return derive_manifest(run)


def record(run: Path, kind: str, variant: str | None = None, config: dict | None = None) -> Manifest:
    """Note in ``run``'s manifest (atomically rewritten) that ``kind`` was just written.

    ``kind``: ``checkpoint``, ``prototypes`` (single) or ``adapter`` / ``bank`` (per ``variant``).
    """
    run = Path(run)
    manifest = read_manifest(run)  # a run without a manifest starts from what is already there
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    cfg = digest(config) if config is not None else None
    if kind == "checkpoint":
        manifest.checkpoint = Entry(".", cfg, now)
    elif kind == "prototypes":
        manifest.prototypes = Entry(PROTOTYPES_FILE, cfg, now)
    elif kind == "adapter" and variant:
        manifest.adapters[variant] = Entry(adapter_dir(run, variant).name, cfg, now)
    elif kind == "bank" and variant:
        manifest.banks[variant] = Entry(bank_dir(run, variant).name, cfg, now)
    else:
        raise ValueError(f"unknown manifest entry {kind!r} (variant {variant!r})")
    atomic_write_text(manifest_file(run), manifest.to_json())
    manifest.derived = False
    return manifest
