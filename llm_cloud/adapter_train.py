"""Training the adapter in the cloud: base model frozen as the anchor, validation-selected."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from llm_cloud.adapter import Adapter, edited_logits, multi_target_ce
from llm_cloud.adapter_config import AdapterConfig
from llm_cloud.adapter_data import TrainingSamples, batch_from_rows, training_samples
from recsys.evaluate import evaluate_rows
from recsys.models import EditableSeqRec
from recsys.splits import SplitData
from recsys.train import epoch_order, seed_everything

log = logging.getLogger(__name__)


def adapter_score_fn(base: EditableSeqRec, adapter: Adapter, n_window: int, code_table: torch.Tensor | None):
    """RecBole-row scores of the base model edited per sample by ``adapter``."""

    def fn(rows) -> torch.Tensor:
        b = batch_from_rows(base, rows, n_window, code_table)
        _, edit = adapter(b.window, b.codes, b.state, base)
        return edited_logits(base, b.state, edit)

    return fn


@dataclass
class AdapterResult:
    adapter: Adapter
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    samples: TrainingSamples | None = None


def train_adapter(
    base: EditableSeqRec,
    split: SplitData,
    cfg: AdapterConfig,
    seed: int,
    code_table: torch.Tensor | None = None,
    eval_batch_size: int = 256,
    progress: bool = True,
) -> AdapterResult:
    """Train an adapter on every training-period window of ``split``; keep the best epoch on validation.

    Runs on the base model's device (``code_table`` must be there too).
    """
    seed_everything(seed)
    base.eval()
    device = base.item_embeddings.device
    for p in base.parameters():
        p.requires_grad_(False)
    samples = training_samples(base, split.train_sequences, cfg.window, cfg.n_future)
    per_epoch = min(len(samples), cfg.samples_per_epoch or len(samples))
    code_sizes = None if code_table is None else [int(code_table[:, i].max()) for i in range(code_table.size(1))]
    adapter = Adapter(
        cfg, base.n_items, base.head.dim, len(base.head.layers), code_sizes, base.item_embeddings.detach().clone()
    ).to(device)
    opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    valid_rows = split.eval_rows("valid")
    best, best_valid, best_epoch, bad, history = None, None, -1, 0, []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"adapter seed {seed}", disable=not progress, leave=False)
    for epoch in bar:
        adapter.train()
        order = torch.from_numpy(epoch_order(len(samples), seed, epoch)[:per_epoch]).to(device)
        total, n = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            batch = samples.batch(order[start : start + cfg.batch_size], code_table)
            _, edit = adapter(batch.window, batch.codes, batch.state, base)
            loss = multi_target_ce(edited_logits(base, batch.state, edit), batch.targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adapter.parameters(), cfg.grad_clip)
            opt.step()
            total, n = total + loss.item(), n + 1
        adapter.eval()
        valid = evaluate_rows(
            adapter_score_fn(base, adapter, cfg.window, code_table), valid_rows, split.config, eval_batch_size, device
        )
        elapsed = time.perf_counter() - t0
        history.append({"epoch": epoch, "loss": total / max(n, 1), "seconds": round(elapsed, 1), **valid})
        bar.set_postfix(loss=f"{total / max(n, 1):.3f}", ndcg10=f"{valid['ndcg@10']:.4f}")
        if best_valid is None or valid["ndcg@10"] > best_valid["ndcg@10"]:
            best, best_valid, best_epoch, bad = copy.deepcopy(adapter.state_dict()), valid, epoch, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
        if cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s:
            log.info("adapter seed %d: time budget %.0f s reached after epoch %d", seed, cfg.time_budget_s, epoch)
            break
    adapter.load_state_dict(best)
    adapter.eval()
    return AdapterResult(adapter, best_epoch, best_valid, history, time.perf_counter() - t0, samples)


def code_table_from_ids(semantic_ids: np.ndarray, row_of_internal_id: np.ndarray) -> torch.Tensor:
    """``[n_items, levels]`` codes per internal item id (+1 so 0 is padding); unknown items get 0."""
    table = np.zeros((len(row_of_internal_id), semantic_ids.shape[1]), dtype=np.int64)
    known = row_of_internal_id >= 0
    table[known] = semantic_ids[row_of_internal_id[known]] + 1
    return torch.from_numpy(table)
