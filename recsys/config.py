"""Typed configuration with RecBole-style layering.

The defaults are the pydantic models' (here and in the sections ``serving.config.AppConfig`` adds);
``persona config`` prints the resolved YAML. Layers, later wins: the defaults →
``datasets/<dataset>.yaml`` → what was recorded when the dataset was prepared
(``<data.workdir>/<dataset>/dataset.json``: the protocol of an imported CSV) → ``models/<model>.yaml``
(the YAML layers in :data:`CONFIG_DIR`, package data of ``recsys``) → a user file (``--config``) →
``key=value`` overrides (dotted keys, YAML-parsed values). Unknown keys are errors that name the field.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recsys import run_layout

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(os.environ.get("PERSONA_CONFIG_DIR") or Path(__file__).resolve().parent / "configs")
MANIFEST = "dataset.json"  # beside a prepared dataset's atomic files: how it was imported (recsys.datasets)

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration problem; the message names the offending field."""


class StrictConfig(BaseModel):
    """The base of every config section: an unknown key is an error naming it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(StrictConfig):
    """Where the dataset comes from and how it is split."""

    mirror: str | None = None  # raw-data mirror dir; None → $PERSONA_DATA_MIRROR or ../shared/data
    workdir: str = "data/atomic"  # converted RecBole atomic files
    protocol: Literal["shift", "order"] = "shift"
    split: list[float] = Field(default_factory=lambda: [0.7, 0.1, 0.2])  # shift protocol ratios
    max_seq_len: int = Field(50, ge=2)
    download: bool = False  # fetch from the official URL when the mirror lacks the dataset
    item_side: str | None = None  # side file (model_params.item_side); None → <output_dir>/<dataset>/codebook/
    # item context text for the LLM (llm_cloud.context_text), e.g. "{title}.[ Tags: {tags}.]": a [...] segment is
    # dropped when a field in it is empty; set per dataset in configs/datasets/; None → "column: value." each
    text_template: str | None = None


class ModelConfig(StrictConfig):
    """Device model: a RecBole sequence encoder plus the editable head."""

    hidden_size: int = Field(64, ge=4)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(2, ge=1)
    inner_size: int = Field(256, ge=4)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    head_layers: int = Field(2, ge=1)  # L editable dense layers (D x D)
    head_activation: Literal["tanh", "relu", "gelu"] = "tanh"
    # LLM item knowledge (recsys.item_side): none = item-ID embeddings only; init = ID embeddings start from the
    # whitened LLM embeddings; fused = ID view + a trained projection of the frozen LLM view; codes = ID view +
    # semantic-code embeddings shared across items. fused/codes score items without training interactions too.
    item_side: Literal["none", "init", "fused", "codes"] = "fused"  # best on validation (docs/item_side.md)
    side_dims: int = Field(64, ge=1)  # whitened principal components of the LLM embeddings kept
    id_dropout: float = Field(0.1, ge=0.0, lt=1.0)  # fused/codes: share of items whose ID view a training batch drops
    unseen_negatives: bool = True  # fused/codes: items with no training interaction are negatives in the training
    # softmax (False: left out of it, as items that did not exist yet; a full softmax only ever pushes them down)


class LoopConfig(StrictConfig):
    """What every trained thing tells the one fit loop (:func:`recsys.loop.fit`): the base model's ``train:``
    and the adapter's ``adapter:`` sections extend it (with their own defaults)."""

    epochs: int = Field(40, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    patience: int = Field(4, ge=1)  # epochs without a validation gain before stopping (after the warm-up)
    min_epochs: int = Field(5, ge=0)  # no early stop before this many epochs
    plateau_gain: float = Field(0.5, ge=0)  # patience counts once validation beats epoch 0 by this fraction
    time_budget_s: float | None = Field(None, gt=0)  # optional wall-clock cap per run (the run is marked unconverged)
    micro_batches: int | None = Field(None, ge=1)  # parts per global batch (accumulated); None = DDP world size


class TrainConfig(LoopConfig):
    """The base model's training (``train:``): the loop, plus how the windows are batched and run."""

    bucket_batches: int = Field(32, ge=0)  # sort each run of N batches by window length: less padding (0 = off)
    threads: int = Field(1, ge=1)
    nproc: int = Field(1, ge=1)  # `persona train` processes on this machine (DDP under torchrun when > 1)
    dist_timeout_s: float = Field(300.0, gt=0)  # collectives fail (not hang) when a rank is gone this long


class EvalConfig(StrictConfig):
    topk: list[int] = Field(default_factory=lambda: [5, 10, 20])
    batch_size: int = Field(256, ge=1)
    valid_metric: str = "ndcg@10"


class PersonaConfig(StrictConfig):
    dataset: str = "ml-100k"
    device: str = "cpu"  # torch device for training/evaluation: cpu, cuda, cuda:N, or auto
    model: str = "sasrec"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    output_dir: str = "runs"
    reports_dir: str = "reports"
    data: DataConfig = Field(default_factory=DataConfig)
    model_params: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def torch_device(self) -> str:
        if self.device == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def run_dir(self, seed: int) -> Path:
        return run_layout.seed_dir(self.output_dir, self.dataset, self.model, seed)

    def item_side_path(self) -> Path:
        """The side file ``model_params.item_side`` reads (written by ``persona codebook``)."""
        if self.data.item_side:
            return Path(self.data.item_side)
        return run_layout.item_side_file(self.output_dir, self.dataset)


def deep_merge(base: dict, update: dict) -> dict:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(pairs: list[str]) -> dict:
    """``["train.lr=0.01", "seeds=[0,1]"]`` → nested dict (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override '{pair}' is not of the form key=value")
        key, raw = pair.split("=", 1)
        if not key:
            raise ConfigError(f"override '{pair}' has an empty key")
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"override '{pair}' conflicts with '{'.'.join(parts[: i + 1])}={node}' given before it"
                )
        if isinstance(node.get(parts[-1]), dict) and not isinstance(value, dict):
            raise ConfigError(f"override '{pair}' would replace the section set by earlier '{key}.*' overrides")
        node[parts[-1]] = value
    return out


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    return data


def user_layers(user_file: str | None = None, overrides: list[str] | None = None) -> dict:
    """What the user gave: the ``--config`` file with the ``key=value`` overrides over it."""
    user = read_yaml(user_file_path(user_file)) if user_file else {}
    return deep_merge(user, parse_overrides(overrides or []))


def read_manifest(directory: Path) -> dict | None:
    """The :data:`MANIFEST` of a prepared dataset directory, or None when it has none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"dataset manifest {path} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("protocol") not in ("shift", "order"):
        raise ConfigError(f"dataset manifest {path} records no protocol (shift | order): prepare the dataset again")
    return manifest


def _recorded_layer(top: dict, given: dict) -> dict:
    """The protocol recorded with the dataset ``top`` names, as a layer; a warning when ``given`` contradicts it."""
    data = top.get("data") if isinstance(top.get("data"), dict) else {}
    name = top.get("dataset", PersonaConfig.model_fields["dataset"].default)
    if not isinstance(name, str) or not name:
        return {}
    directory = Path(str(data.get("workdir", DataConfig.model_fields["workdir"].default))) / name
    manifest = read_manifest(directory)
    if manifest is None:
        return {}
    recorded = manifest["protocol"]
    asked = given.get("data", {}).get("protocol") if isinstance(given.get("data"), dict) else None
    if asked is not None and asked != recorded:
        how = manifest.get("protocol_source", "recorded")
        log.warning("dataset %s was prepared with protocol %s (%s, %s); data.protocol=%s given overrides it",
                    name, recorded, how, directory / MANIFEST, asked)
    return {"data": {"protocol": recorded}}


def user_file_path(user_file: str) -> Path:
    """``--config FILE`` as given, else relative to :data:`CONFIG_DIR` (``--config backbones/smollm2.yaml``)."""
    path = Path(user_file)
    if not path.is_file() and not path.is_absolute() and (CONFIG_DIR / path).is_file():
        return CONFIG_DIR / path
    return path


def layered_dict(user_file: str | None = None, overrides: list[str] | None = None) -> dict:
    """Merge the config layers into one plain dict (before validation; the models supply the defaults)."""
    user = read_yaml(user_file_path(user_file)) if user_file else {}
    cli = parse_overrides(overrides or [])
    given = deep_merge(user, cli)
    top = given  # decides which dataset/model layers apply
    merged: dict = {}
    for section, key in (("datasets", "dataset"), ("models", "model")):
        path = CONFIG_DIR / section / f"{top.get(key, PersonaConfig.model_fields[key].default)}.yaml"
        if path.is_file():
            merged = deep_merge(merged, read_yaml(path))
        if section == "datasets":
            merged = deep_merge(merged, _recorded_layer(deep_merge(deep_merge(merged, user), cli), given))
    return deep_merge(deep_merge(merged, user), cli)


C = TypeVar("C", bound=BaseModel)


def validate(data: dict, schema: type[C] = PersonaConfig) -> C:
    """Validate ``data`` against ``schema`` (packages above recsys extend PersonaConfig with sections)."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"config field '{field}': {first['msg']}") from exc


def load_config(user_file: str | None = None, overrides: list[str] | None = None, schema: type[C] = PersonaConfig) -> C:
    """Build the validated config from all layers."""
    return validate(layered_dict(user_file, overrides), schema)


def dump_config(cfg: BaseModel) -> str:
    """``cfg`` as YAML, in the models' field order (what ``persona config`` prints)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
