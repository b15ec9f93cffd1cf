"""Typed config of the adapter (editor) and the prototype bank."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recsys.config import LoopConfig, StrictConfig


class AdapterConfig(LoopConfig):
    """The cloud hypernetwork that turns a device's recent window into head edits."""

    window: int = Field(20, ge=1)  # last N items of the device's real-time data
    code_dim: int = Field(64, ge=4)  # per-layer code z_l
    cross_layer: bool = True  # stacked recurrent codes across layers (False = independent maps)
    use_codebook: bool = True  # semantic-code embeddings of the window's items as input
    use_state: bool = True  # the device model's user state h as input
    use_context: bool = False  # codebook hits of the user-context encoding (LLM) as input (llm_cloud.context_hits)
    context_items: int = Field(10, ge=1)  # the user context = the window's last this-many items
    semantic_main: bool = False  # SOLID: the semantic path (context hits + window codes) gives the main code,
    # the ID path (GRU over item ids + h) a gated residual; needs use_context
    rank: int = Field(0, ge=0)  # 0 = full-rank ΔW_l; r > 0 = ΔW_l = U_l(z_l) V_l(z_l), rank r
    clip: float = Field(0.02, gt=0)  # entries of ΔW_l, Δb_l are clipped to ±clip
    anchor: bool = True  # False = DUET-style: the head is generated outright, base head unused
    n_future: int = Field(1, ge=1)  # train the edited head on the next n_future items
    train_item_emb: bool = True  # fine-tune the adapter's copy of the base item embeddings (False = frozen copy)
    dropout: float = Field(0.0, ge=0, lt=1)  # on the window's input embeddings and the sequence code (training)
    # the loop (LoopConfig), with the adapter's defaults: it starts at "no edit", so no plateau to wait out
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(256, ge=1)
    grad_clip: float = Field(1.0, gt=0)
    patience: int = Field(3, ge=1)  # counted after the warm-up (recsys.loop)
    min_epochs: int = Field(0, ge=0)
    plateau_gain: float = Field(0.0, ge=0)
    samples_per_epoch: int | None = Field(None, ge=1)  # None = every training window each epoch; else a fresh
    # random subset of this many windows per epoch (large catalogues: more epochs, all windows still seen)


class PrototypeConfig(StrictConfig):
    """The prototype bank built from adapter codes."""

    k: int = Field(8, ge=1)  # initial prototypes (k-means over layer-major codes)
    max_k: int = Field(16, ge=1)  # cap when out-of-distribution windows open new prototypes
    variant: Literal["finetune", "centre"] = "finetune"  # prototype head: fine-tuned on its cluster, or centre edit
    finetune_epochs: int = Field(3, ge=1)
    finetune_lr: float = Field(1e-3, gt=0)
    residual_clip: float = Field(0.5, gt=0)  # clip of the per-sample residual edit on top of a prototype
    total_clip: float = Field(1.0, gt=0)
    ood_quantile: float = Field(0.95, gt=0, lt=1)  # OOD threshold = this quantile of validation rows' OOD scores
    refine_rate: float | None = Field(None, gt=0, le=1)  # dynamic refinement: centre ← centre + rate·(z − centre);
    # None = running mean (rate 1/(n_k + 1), n_k = training cluster size + windows absorbed since)
    online_lr: float | None = Field(None, gt=0)  # dynamic banks: prequential Adam steps on the assigned
    # prototypes' heads from the items devices consumed after being answered (None = unsupervised refinement only)
    assignment: Literal["nearest", "min-residual"] = "nearest"
    spawn: bool = True  # OOD windows open a new prototype (else: fall back to the per-sample edit)
    build_samples: int | None = Field(60000, ge=1)  # training windows the bank is built from (random subset)
