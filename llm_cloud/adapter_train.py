"""Training the adapter in the cloud: base model frozen as the anchor, validation-selected."""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from llm_cloud.adapter import Adapter, edited_logits
from llm_cloud.adapter_config import AdapterConfig
from llm_cloud.adapter_data import TrainingSamples, batch_from_rows, training_samples
from recsys import distributed
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


class AdapterLossSum(nn.Module):
    """Summed CE of the edited (frozen) base over a batch's next items; the ``forward`` DDP wraps.

    The base is held outside the module tree: it is frozen, identical on every rank, and not DDP's to sync.
    """

    def __init__(self, adapter: Adapter, base: EditableSeqRec):
        super().__init__()
        self.adapter = adapter
        self._base = (base,)

    def forward(self, window, codes, state, targets) -> torch.Tensor:
        base = self._base[0]
        _, edit = self.adapter(window, codes, state, base)
        logp = torch.log_softmax(edited_logits(base, state, edit), dim=-1)
        return -(logp.gather(1, targets.clamp(min=0)) * (targets > 0)).sum()


def train_adapter(
    base: EditableSeqRec,
    split: SplitData,
    cfg: AdapterConfig,
    seed: int,
    code_table: torch.Tensor | None = None,
    eval_batch_size: int = 256,
    progress: bool = True,
    dist_timeout_s: float = 300.0,
) -> AdapterResult:
    """Train an adapter on the training-period windows of ``split``; keep the best epoch on validation.

    Runs on the base model's device (``code_table`` must be there too). Under ``torchrun`` (a process
    group is held) the adapter is wrapped in DDP: every rank takes its shard of each global batch
    (:func:`recsys.train.epoch_order`), the summed loss is scaled by ``world / targets in the global
    batch`` so the averaged gradient equals the single-process one, and rank 0 validates and decides
    when to stop for every rank. The result is the same on every rank; the caller saves on rank 0.
    """
    seed_everything(seed)
    base.eval()
    device = base.item_embeddings.device
    for p in base.parameters():
        p.requires_grad_(False)
    rank, world = distributed.rank(), distributed.world_size()
    if cfg.batch_size % world:
        raise ValueError(f"adapter.batch_size={cfg.batch_size} must be a multiple of the {world} ranks")
    samples = training_samples(base, split.train_sequences, cfg.window, cfg.n_future)
    n_targets = (samples.targets > 0).sum(1).cpu().numpy()
    per_epoch = min(len(samples), cfg.samples_per_epoch or len(samples))
    code_sizes = None if code_table is None else [int(code_table[:, i].max()) for i in range(code_table.size(1))]
    adapter = Adapter(
        cfg, base.n_items, base.head.dim, len(base.head.layers), code_sizes, base.item_embeddings.detach().clone()
    ).to(device)
    loss_sum: nn.Module = AdapterLossSum(adapter, base)
    die_at = None
    if world > 1:
        ids = [int(device.split(":")[1])] if str(device).startswith("cuda:") else None
        loss_sum = DistributedDataParallel(loss_sum, device_ids=ids, broadcast_buffers=False)
        die_at = distributed.fault_step_for_tests()
    trainable = [p for p in adapter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    valid_rows = split.eval_rows("valid")
    best, best_valid, best_epoch, bad, history = None, None, -1, 0, []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"adapter seed {seed}", disable=not progress, leave=False)
    with distributed.collective_errors(dist_timeout_s):
        for epoch in bar:
            adapter.train()
            full = epoch_order(len(samples), seed, epoch)[:per_epoch]  # this epoch's windows, shuffled
            shard = torch.from_numpy(full[rank::world]).to(device)
            batch, per_rank = cfg.batch_size, cfg.batch_size // world
            steps = -(-per_epoch // batch)
            total = 0.0
            for step in range(steps):
                if die_at is not None and epoch == 0 and step == die_at:
                    os._exit(1)  # test-only fault injection (recsys.distributed.TEST_DIE_ENV)
                # rank r's part of global batch k = positions r, r+W, ... of it: the ranks' union is the batch
                idx = shard[step * per_rank : (step + 1) * per_rank]
                scale = world / max(float(n_targets[full[step * batch : (step + 1) * batch]].sum()), 1.0)
                if len(idx) == 0:  # a last global batch smaller than the world: join the all-reduce with zeros
                    idx, scale = shard[:1], 0.0
                b = samples.batch(idx, code_table)
                loss = loss_sum(b.window, b.codes, b.state, b.targets) * scale
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(adapter.parameters(), cfg.grad_clip)
                opt.step()
                total += loss.item() / world
            total = distributed.all_reduce_sum(total)
            adapter.eval()
            valid, over_budget = None, False
            if rank == 0:  # rank 0 validates and decides on the time budget; every rank applies it
                score_fn = adapter_score_fn(base, adapter, cfg.window, code_table)
                valid = evaluate_rows(score_fn, valid_rows, split.config, eval_batch_size, device)
                over_budget = cfg.time_budget_s is not None and time.perf_counter() - t0 >= cfg.time_budget_s
            valid, over_budget = distributed.broadcast_object((valid, over_budget))
            elapsed = time.perf_counter() - t0
            history.append({"epoch": epoch, "loss": total / steps, "seconds": round(elapsed, 1), **valid})
            bar.set_postfix(loss=f"{total / steps:.3f}", ndcg10=f"{valid['ndcg@10']:.4f}")
            if best_valid is None or valid["ndcg@10"] > best_valid["ndcg@10"]:
                best, best_valid, best_epoch, bad = copy.deepcopy(adapter.state_dict()), valid, epoch, 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
            if over_budget:
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
