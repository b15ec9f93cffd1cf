"""RecBole datasets and splits for the two protocols.

* **shift** (timestamped data): RecBole ``eval_args = {split: {RS: [0.7, 0.1, 0.2]}, order: TO,
  group_by: none}`` sorts RecBole's augmented rows (one per user prefix) by the target's time and
  cuts them globally, so every validation/test target lies after every training target, and each
  row keeps the user's full prior history as input (the device's real-time data).
* **order** (no timestamps): RecBole leave-one-out per user (``LS: valid_and_test``, ``order: TO``
  on the per-user position).

Besides RecBole's split datasets, :class:`SplitData` carries each user's training-period sequence
for the all-position training loop, and training-period item counts for the popularity baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from recbole.config import Config
from recbole.data import create_dataset
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender import SASRec

import recsys  # noqa: F401  (numpy compatibility before RecBole)
from recsys.compat import recbole_argv_isolated
from recsys.config import DataConfig, EvalConfig

METRICS = ["NDCG", "Hit", "MRR"]


def recbole_config(name: str, atomic_root: Path, data: DataConfig, ev: EvalConfig, seed: int = 0) -> Config:
    """The RecBole Config for ``name`` under ``data.protocol`` (model hyper-parameters live in ours)."""
    if data.protocol == "shift":
        eval_args = {"split": {"RS": list(data.split)}, "order": "TO", "group_by": "none", "mode": "full"}
    else:
        eval_args = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"}
    cfg = {
        "data_path": str(atomic_root),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": data.max_seq_len,
        "eval_args": eval_args,
        "metrics": METRICS,
        "topk": list(ev.topk),
        "valid_metric": ev.valid_metric.upper(),
        "eval_batch_size": ev.batch_size,
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "seed": seed,
        "reproducibility": True,
        "device": "cpu",
        "use_gpu": False,
        "show_progress": False,
        "state": "WARNING",
        "save_dataset": False,
        "save_dataloaders": False,
        "checkpoint_dir": str(atomic_root / ".recbole_saved"),
    }
    with recbole_argv_isolated():
        return Config(model=SASRec, dataset=name, config_dict=cfg)


@dataclass
class SplitData:
    """RecBole's split of one dataset plus what the all-position trainer and baselines need."""

    name: str
    protocol: str
    config: Config
    n_items: int  # RecBole item_num, including the padding id 0
    item_tokens: np.ndarray  # internal id → original item token ('[PAD]' at 0)
    train_sequences: list[np.ndarray]  # per user, the training-period item sequence (internal ids)
    train_counts: np.ndarray  # training-period interactions per item, length n_items
    valid: object  # RecBole dataset of validation rows (item_id_list, item_length, item_id, timestamp)
    test: object  # RecBole dataset of test rows
    # shift protocol: the last training-period time; nothing later may reach training or the item context
    train_cutoff: float | None = None

    def eval_rows(self, split: str) -> Interaction:
        return (self.valid if split == "valid" else self.test).inter_feat


def _user_sequences(dataset) -> dict[int, np.ndarray]:
    """Each user's whole sequence in RecBole's augmentation order (stable sort by user, time)."""
    df = dataset.inter_feat
    uid = df[dataset.uid_field].to_numpy()
    iid = df[dataset.iid_field].to_numpy()
    ts = df[dataset.time_field].to_numpy().astype(np.float32)  # RecBole sorts float32 times
    order = np.lexsort((ts, uid))  # stable: equal keys keep file order, as RecBole's chained argsort
    uid, iid = uid[order], iid[order]
    bounds = np.flatnonzero(np.diff(uid)) + 1
    return {int(u[0]): s for u, s in zip(np.split(uid, bounds), np.split(iid, bounds))}


def _check_same_pairs(u1: np.ndarray, i1: np.ndarray, u2: np.ndarray, i2: np.ndarray) -> None:
    """The reconstructed training targets must be exactly RecBole's training rows (as a multiset)."""
    a = np.sort(u1.astype(np.int64) * (1 << 32) + i1)
    b = np.sort(u2.astype(np.int64) * (1 << 32) + i2)
    if a.shape != b.shape or not np.array_equal(a, b):
        raise AssertionError("training sequences disagree with RecBole's training rows")


def load_split(name: str, atomic_root: Path, data: DataConfig, ev: EvalConfig, seed: int = 0) -> SplitData:
    """Create the RecBole dataset for ``name`` from ``atomic_root/<name>`` and split it."""
    config = recbole_config(name, atomic_root, data, ev, seed)
    dataset = create_dataset(config)
    sequences = _user_sequences(dataset)
    train_ds, valid_ds, test_ds = dataset.build()
    # Training targets per user are the earliest positions 1..n_u of that user's sequence.
    train_uid = train_ds.inter_feat[train_ds.uid_field].numpy()
    train_iid = train_ds.inter_feat[train_ds.iid_field].numpy()
    n_targets = np.bincount(train_uid, minlength=dataset.user_num)
    train_sequences, users, targets = [], [], []
    for user, seq in sequences.items():
        n = int(n_targets[user])
        if n > 0:
            train_sequences.append(seq[: n + 1].astype(np.int64))
            users.append(np.full(n, user))
            targets.append(seq[1 : n + 1])
    _check_same_pairs(np.concatenate(users), np.concatenate(targets), train_uid, train_iid)
    n_items = dataset.item_num
    counts = np.bincount(train_iid, minlength=n_items).astype(np.float64)
    first_items = np.array([s[0] for s in train_sequences], dtype=np.int64)
    counts += np.bincount(first_items, minlength=n_items)
    tokens = np.asarray(dataset.field2id_token[dataset.iid_field])
    return SplitData(
        name=name,
        protocol=data.protocol,
        config=config,
        n_items=n_items,
        item_tokens=tokens,
        train_sequences=train_sequences,
        train_counts=counts,
        valid=valid_ds,
        test=test_ds,
        train_cutoff=float(train_ds.inter_feat[dataset.time_field].max()) if data.protocol == "shift" else None,
    )


def split_sizes(split: SplitData) -> dict[str, tuple[int, int]]:
    """``{"train" | "valid" | "test": (rows, users)}``: RecBole's rows (one target each) and their users."""
    uid = split.config["USER_ID_FIELD"]
    out = {"train": (int(sum(len(s) - 1 for s in split.train_sequences)), len(split.train_sequences))}
    for part in ("valid", "test"):
        users = split.eval_rows(part)[uid].numpy()
        out[part] = (len(users), int(np.unique(users).size))
    return out
