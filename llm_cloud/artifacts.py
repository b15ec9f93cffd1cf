"""Adapter + prototype-bank artifacts on disk (state_dicts + YAML) and the semantic-code table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from codebook import CodebookError, SemanticCodebook
from llm_cloud.adapter import Adapter
from llm_cloud.adapter_config import AdapterConfig, PrototypeConfig
from llm_cloud.context_hits import UserContextHits
from llm_cloud.prototypes import PrototypeBank
from recsys.atomic_io import atomic_torch_save, atomic_write_text
from recsys.item_side import rows_for, take_rows
from recsys.models import EditableSeqRec


class ArtifactError(RuntimeError):
    pass


def code_table_for(codebook_dir: Path, item_tokens: np.ndarray) -> torch.Tensor:
    """``[n_items, levels]`` semantic codes per internal item id (+1; 0 = padding / unknown item)."""
    if not (Path(codebook_dir) / "meta.json").is_file():
        raise ArtifactError(f"no semantic codebook in {codebook_dir}; run `persona codebook` first")
    book = SemanticCodebook.load(codebook_dir)
    return torch.from_numpy(take_rows(book.semantic_ids.astype(np.int64) + 1, rows_for(item_tokens, book.item_ids)))


def user_context_for(codebook_dir: Path, item_tokens: np.ndarray, n_recent: int) -> UserContextHits:
    """User-context hits from ``persona codebook``'s artifacts (codebook + cached item embeddings)."""
    from llm_cloud.pipeline import load_item_codebook

    codebook_dir = Path(codebook_dir)
    if not (codebook_dir / "meta.json").is_file():
        raise ArtifactError(f"no semantic codebook in {codebook_dir}; run `persona codebook` first")
    try:
        _, emb, book = load_item_codebook(codebook_dir.parent.parent, codebook_dir.parent.name)
    except CodebookError as exc:
        raise ArtifactError(str(exc)) from exc
    return UserContextHits.from_codebook(book, emb, item_tokens, n_recent)


def save_adapter(
    directory: Path,
    adapter: Adapter,
    meta: dict,
    code_table: torch.Tensor | None = None,
    context: UserContextHits | None = None,
) -> Path:
    """``adapter.pt`` + ``adapter.yaml`` (+ ``code_table.pt``, the semantic codes it reads; + the user-context
    artifacts ``context_items.pt`` and ``context_codebook/`` when it reads context hits), atomically."""
    directory = Path(directory)
    (directory / "adapter.yaml").unlink(missing_ok=True)
    atomic_torch_save(adapter.state_dict(), directory / "adapter.pt")
    if code_table is not None:
        atomic_torch_save({"codes": code_table.cpu()}, directory / "code_table.pt")
    (directory / "context_items.pt").unlink(missing_ok=True)
    if adapter.context_sizes:
        if context is None:
            raise ArtifactError("this adapter reads user-context hits: save it with its context")
        context.save(directory)
    info = {
        "config": adapter.cfg.model_dump(),
        "n_items": adapter.item_emb.num_embeddings,
        "dim": adapter.dim,
        "n_layers": adapter.n_layers,
        "code_sizes": adapter.code_sizes,
        "context_sizes": adapter.context_sizes,
        **meta,
    }
    atomic_write_text(directory / "adapter.yaml", yaml.safe_dump(info, sort_keys=False))
    return directory


def load_code_table(directory: Path) -> torch.Tensor | None:
    path = Path(directory) / "code_table.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["codes"] if path.is_file() else None


def load_user_context(directory: Path) -> UserContextHits | None:
    """The user-context artifacts saved beside an adapter (None for one that reads no context)."""
    return UserContextHits.load(directory)


def load_adapter(directory: Path) -> tuple[Adapter, dict]:
    directory = Path(directory)
    if not (directory / "adapter.yaml").is_file():
        raise ArtifactError(f"no complete adapter in {directory}")
    info = yaml.safe_load((directory / "adapter.yaml").read_text())
    adapter = Adapter(
        AdapterConfig(**info["config"]), info["n_items"], info["dim"], info["n_layers"], info["code_sizes"] or None,
        context_sizes=info.get("context_sizes") or None,  # adapters saved before user context have none
    )
    adapter.load_state_dict(torch.load(directory / "adapter.pt", map_location="cpu", weights_only=True))
    return adapter.eval(), info


def save_bank(directory: Path, bank: PrototypeBank) -> Path:
    directory = Path(directory)
    (directory / "bank.yaml").unlink(missing_ok=True)
    atomic_torch_save(bank.state_dict(), directory / "bank.pt")
    info = {"config": bank.cfg.model_dump(), "n_layers": bank.n_layers, "code_dim": bank.code_dim}
    info["adapter_clip"] = bank.adapter_clip
    atomic_write_text(directory / "bank.yaml", yaml.safe_dump(info, sort_keys=False))
    return directory


def load_bank(directory: Path) -> PrototypeBank:
    directory = Path(directory)
    if not (directory / "bank.yaml").is_file():
        raise ArtifactError(f"no complete prototype bank in {directory}")
    info = yaml.safe_load((directory / "bank.yaml").read_text())
    bank = PrototypeBank(PrototypeConfig(**info["config"]), info["n_layers"], info["code_dim"], info["adapter_clip"])
    bank.load_state_dict(torch.load(directory / "bank.pt", map_location="cpu", weights_only=True))
    return bank


def freeze(model: EditableSeqRec) -> EditableSeqRec:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
