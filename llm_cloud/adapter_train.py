"""Training the adapter in the cloud: base model frozen as the anchor, validation-selected."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from llm_cloud.adapter import Adapter, edited_logits
from llm_cloud.adapter_config import AdapterConfig
from llm_cloud.adapter_data import TrainingSamples, batch_from_rows, training_samples
from llm_cloud.context_hits import UserContextHits
from recsys.evaluate import evaluate_rows
from recsys.loop import FitResult, HasFit, LoopSettings, fit, seed_everything, settings_from
from recsys.models import EditableSeqRec
from recsys.splits import SplitData

log = logging.getLogger(__name__)


def adapter_score_fn(
    base: EditableSeqRec,
    adapter: Adapter,
    n_window: int,
    code_table: torch.Tensor | None,
    context: UserContextHits | None = None,
):
    """RecBole-row scores of the base model edited per sample by ``adapter``."""

    def fn(rows) -> torch.Tensor:
        b = batch_from_rows(base, rows, n_window, code_table, context)
        _, edit = adapter(b.window, b.codes, b.state, base, b.context)
        return edited_logits(base, b.state, edit)

    return fn


@dataclass
class AdapterResult(HasFit):
    adapter: Adapter
    fit: FitResult
    samples: TrainingSamples | None = None


class AdapterLossSum(nn.Module):
    """Summed CE of the edited (frozen) base over a batch's next items; the ``forward`` DDP wraps.

    The base is held outside the module tree: it is frozen, identical on every rank, and not DDP's to sync.
    """

    def __init__(self, adapter: Adapter, base: EditableSeqRec):
        super().__init__()
        self.adapter = adapter
        self._base = (base,)

    def forward(self, window, codes, state, targets, context=None) -> torch.Tensor:
        base = self._base[0]
        _, edit = self.adapter(window, codes, state, base, context)
        logp = torch.log_softmax(edited_logits(base, state, edit), dim=-1)
        # no next item (0, n_future > 1 near a sequence's end): left out, not -inf · 0 (NaN) at the padding id
        return -logp.gather(1, targets.clamp(min=0)).masked_fill(targets <= 0, 0.0).sum()


def loop_settings(cfg: AdapterConfig, valid_metric: str, dist_timeout_s: float) -> LoopSettings:
    return settings_from(cfg, valid_metric=valid_metric, dist_timeout_s=dist_timeout_s,
                         samples_per_epoch=cfg.samples_per_epoch)  # fmt: skip


def train_adapter(
    base: EditableSeqRec,
    split: SplitData,
    cfg: AdapterConfig,
    seed: int,
    code_table: torch.Tensor | None = None,
    eval_batch_size: int = 256,
    progress: bool = True,
    dist_timeout_s: float = 300.0,
    valid_metric: str = "ndcg@10",
    context: UserContextHits | None = None,
) -> AdapterResult:
    """Train an adapter on the training-period windows of ``split``; keep the best epoch on validation.

    Runs on the base model's device (``code_table`` must be there too); epochs, selection, stopping
    and DDP are :func:`recsys.loop.fit`'s. ``context`` (needed when ``cfg.use_context``) gives the
    user-context hits of each window. The result is the same on every rank; the caller saves on rank 0.
    """
    seed_everything(seed)
    base.eval()
    device = base.item_embeddings.device
    for p in base.parameters():
        p.requires_grad_(False)
    samples = training_samples(base, split.train_sequences, cfg.window, cfg.n_future)
    weights = (samples.targets > 0).sum(1).cpu().numpy()
    code_sizes = None if code_table is None else [int(code_table[:, i].max()) for i in range(code_table.size(1))]
    context = context if cfg.use_context else None
    adapter = Adapter(
        cfg, base.n_items, base.head.dim, len(base.head.layers), code_sizes, base.item_embeddings.detach().clone(),
        context.level_sizes if context is not None else None,
    ).to(device)
    trainable = [p for p in adapter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    valid_rows = split.eval_rows("valid")

    def batch_of(idx: torch.Tensor) -> tuple:
        b = samples.batch(idx.to(device), code_table, context)
        return b.window, b.codes, b.state, b.targets, b.context

    def validate() -> dict[str, float]:
        score_fn = adapter_score_fn(base, adapter, cfg.window, code_table, context)
        return evaluate_rows(score_fn, valid_rows, split.config, eval_batch_size, device, by_length=True)

    res = fit(
        adapter, AdapterLossSum(adapter, base), batch_of, weights, validate, opt,
        loop_settings(cfg, valid_metric, dist_timeout_s), seed, desc=f"adapter seed {seed}", progress=progress,
    )
    return AdapterResult(adapter, res, samples)
