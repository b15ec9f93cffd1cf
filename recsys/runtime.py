"""The on-device runtime: rank the full catalogue with the base head, a prototype, or a received edit.

Everything here is forward-only and needs nothing from the cloud packages: a base checkpoint
(:mod:`recsys.checkpoint`) plus, optionally, a prototype cache file (a
:class:`recsys.wire.PrototypeSnapshot` as JSON; the wire formats live in :mod:`recsys.wire`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from persona_device.wire import check_snapshot, scoring_table
from recsys.checkpoint import load_checkpoint
from recsys.models import EditableSeqRec, HeadEdit
from recsys.ood import entropy
from recsys.wire import EditPayload, PrototypeSnapshot


class DeviceRuntime:
    """A device's model: map item tokens, compute the user state, assign a prototype, rank.

    More than 12 methods, on purpose: they are the steps of the one rank path the device service calls
    (``encode_histories`` → ``user_states`` → ``assign_batch`` / ``ood_flags`` → ``head_batch`` →
    ``rank_states``), the cached prototype bank those steps read (``set_prototypes``, ``prototype_edit``,
    ``decode_edit``, ``edit_encoding_ready``) and thin one-request wrappers of them (``encode_history``,
    ``user_state``, ``assign``, ``scores``, ``rank``), mirrored method for method by
    :class:`persona_device.runtime.OnnxDeviceRuntime`; split up, the one API would be scattered over objects
    both runtimes would have to mirror.
    """

    def __init__(self, model: EditableSeqRec, item_tokens: np.ndarray, cache_gate: bool = True):
        self.model = model.eval()
        self.cache_gate = cache_gate  # serve a cached prototype's edit only where the snapshot's cache_ok allows
        self.item_tokens = item_tokens
        self.token_to_id = {str(t): i for i, t in enumerate(item_tokens) if i > 0}
        self.prototypes: PrototypeSnapshot | None = None
        self._signatures: torch.Tensor | None = None
        self._proto_edits: list[HeadEdit | None] = []
        self.scoring_items: torch.Tensor | None = None  # the item table + the cached bank's item delta (None: none)

    @classmethod
    def load(cls, checkpoint_dir: Path, prototype_cache: Path | None = None) -> DeviceRuntime:
        model, _, tokens = load_checkpoint(checkpoint_dir)
        runtime = cls(model, tokens)
        if prototype_cache is not None and Path(prototype_cache).is_file():
            runtime.set_prototypes(PrototypeSnapshot.load(prototype_cache))
        return runtime

    @property
    def n_items(self) -> int:
        return self.model.n_items

    def set_prototypes(self, snapshot: PrototypeSnapshot) -> None:
        """Cache ``snapshot``: its prototypes, their edits and its item delta (scored with from now on), all or
        nothing."""
        check_snapshot(snapshot, self.model.head.dim)
        edits = [e.head_edit() for e in snapshot.edits]  # decode before swapping: never half-updated
        if snapshot.decoder is not None:
            snapshot.decoder.tensors  # noqa: B018 - decoded (and checked) here, once, not on the first edit
        sigs = torch.tensor(snapshot.signatures, dtype=torch.float32) if snapshot.size else None
        table = None
        if snapshot.item_delta is not None:
            table = torch.from_numpy(scoring_table(self.model.item_embeddings.detach().numpy(),
                                                        snapshot.item_delta))  # fmt: skip
        self.prototypes, self._signatures, self._proto_edits = snapshot, sigs, edits
        self.scoring_items = table

    def decode_edit(self, payload: EditPayload) -> HeadEdit | None:
        """A received edit as tensors (``code`` edits through the cached snapshot's decoder)."""
        snap = self.prototypes
        if payload.encoding == "code" and (snap is None or snap.version != payload.version):
            raise ValueError(f"code edit of version {payload.version} but the cached bank is "
                             f"{snap.version if snap else 'missing'}")  # fmt: skip
        return payload.head_edit(snap.decoder if snap else None, self._proto_edits)

    @property
    def edit_encoding_ready(self) -> str | None:
        """The cached bank version against which ``code`` edits can be decoded (None: ask for dense)."""
        snap = self.prototypes
        return snap.version if snap is not None and snap.decoder is not None else None

    # ---- one request: thin wrappers of the batched methods below (tests, benchmarks, device_alone) -------

    def encode_history(self, item_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``[1, T]`` sequence of the last ``max_seq_len`` items and its length."""
        return self.encode_histories([item_ids])

    def user_state(self, item_ids: list[int]) -> torch.Tensor:
        return self.user_states([item_ids])[0]

    def assign(self, state: torch.Tensor) -> tuple[int | None, float]:
        """Nearest prototype signature (Euclidean) and its distance; ``(None, inf)`` without a bank."""
        ks, dists = self.assign_batch(state.view(1, -1))
        return ks[0], dists[0]

    @torch.inference_mode()
    def ood_flags(self, states: torch.Tensor, protos: list[int | None]) -> list[bool]:
        """Per row of ``states`` ``[B, D]`` (nearest prototypes ``protos``): is the device out of distribution
        by the cached bank's score? Always False without a bank or a score."""
        score = self.prototypes.ood if self.prototypes is not None else None
        if score is None or not protos or protos[0] is None:
            return [False] * len(states)
        ent = entropy(self.model.logits(self.model.head(states, None), self.scoring_items))
        return (score.score(ent, torch.tensor(protos)) > score.threshold).tolist()

    def prototype_edit(self, k: int | None) -> HeadEdit | None:
        """Prototype ``k``'s cached edit as the device serves it on its own: None (the base head) when the
        snapshot's ``cache_ok`` says it did not beat the base head (unless ``cache_gate`` is off)."""
        if k is None:
            return None
        ok = self.prototypes.cache_ok if self.prototypes is not None and self.cache_gate else None
        return self._proto_edits[k] if ok is None or ok[k] else None

    @torch.inference_mode()
    def scores(self, item_ids: list[int], edit: HeadEdit | None = None) -> torch.Tensor:
        """Scores of every item ``[n_items]`` (padding id at ``-inf``)."""
        return self.model.logits(self.head_batch(self.user_states([item_ids]), [edit]), self.scoring_items)[0]

    def rank(
        self, item_ids: list[int], k: int, exclude: set[int] | None = None, edit: HeadEdit | None = None
    ) -> tuple[list[int], list[float]]:
        """Top-``k`` item ids and scores over the full catalogue, ``exclude`` removed; ties by lower id."""
        return self.rank_states(self.user_states([item_ids]), [edit], [k], [exclude])[0]

    # ---- batched ranking (many requests, one forward pass) ----------------------------------------

    def encode_histories(self, histories: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``[B, T]`` sequences (each the last ``max_seq_len`` valid items) and their lengths."""
        T, n = self.model.max_seq_len, self.n_items
        rows, lengths = [], []
        for item_ids in histories:
            ids = [i for i in item_ids if 0 < i < n][-T:]
            lengths.append(max(len(ids), 1))
            rows.append(ids + [0] * (T - len(ids)))
        return torch.tensor(rows, dtype=torch.long), torch.tensor(lengths, dtype=torch.long)

    @torch.inference_mode()
    def user_states(self, histories: list[list[int]]) -> torch.Tensor:
        """``[B, D]`` user states of ``B`` histories in one encoder pass (row ``b`` = ``user_state(histories[b])``).

        Padding is trimmed and SASRec reads its last layer at one position (``EditableSeqRec.user_state``).
        """
        seq, length = self.encode_histories(histories)
        empty = seq[:, 0] == 0
        if not bool(empty.any()):
            return self.model.user_state(seq, length)
        # An empty history attends over padding only: every score carries the -10000 mask, so its state is
        # sensitive to float rounding; compute it exactly as batch 1 does (it is the same for every row).
        out = torch.empty(len(seq), self.model.head.dim)
        out[empty] = self.model.user_state(seq[:1] * 0, torch.ones(1, dtype=torch.long))[0]
        if not bool(empty.all()):
            out[~empty] = self.model.user_state(seq[~empty], length[~empty])
        return out

    @torch.inference_mode()
    def assign_batch(self, states: torch.Tensor) -> tuple[list[int | None], list[float]]:
        """:meth:`assign` for each row of ``states`` ``[B, D]``."""
        if self._signatures is None:
            return [None] * len(states), [float("inf")] * len(states)
        dist = torch.cdist(states, self._signatures)
        best, k = dist.min(dim=1)
        return k.tolist(), best.tolist()

    @torch.inference_mode()
    def head_batch(self, states: torch.Tensor, edits: list[HeadEdit | None]) -> torch.Tensor:
        """``[B, D]`` head outputs, row ``b`` edited by ``edits[b]`` (``None`` = base head).

        Rows that share one edit object (or none) share a head call; rows with different edits are scored
        with their (pre-clipped) edits stacked to ``[B', D, D]``, which :class:`EditableHead` applies per row.
        """
        head = self.model.head
        distinct = {id(e): e for e in edits if e is not None}
        if not distinct:
            return head(states)
        if len(distinct) == 1 and all(e is not None for e in edits) and _unbatched(edits[0]):
            return head(states, edits[0])
        out = torch.empty_like(states)
        base = [b for b, e in enumerate(edits) if e is None]
        if base:
            idx = torch.tensor(base)
            out[idx] = head(states[idx])
        rows = [b for b, e in enumerate(edits) if e is not None]
        order = list(distinct)  # unique edits, stacked once and gathered per row
        which = torch.tensor([order.index(id(edits[b])) for b in rows])
        unique = [distinct[key].clipped() for key in order]
        dim, dW, db = head.dim, [], []
        for layer in range(len(head.layers)):
            ws = [e.dW[layer] for e in unique]
            bs = [e.db[layer] for e in unique]
            dW.append(None if all(w is None for w in ws) else torch.stack(
                [torch.zeros(dim, dim) if w is None else w.reshape(dim, dim) for w in ws])[which])
            db.append(None if all(b is None for b in bs) else torch.stack(
                [torch.zeros(dim) if b is None else b.reshape(dim) for b in bs])[which])
        idx = torch.tensor(rows)
        out[idx] = head(states[idx], HeadEdit(dW, db, clip=float("inf")))  # already clipped per edit
        return out

    @torch.inference_mode()
    def rank_states(
        self, states: torch.Tensor, edits: list[HeadEdit | None], ks: list[int], excludes: list[set[int] | None]
    ) -> list[tuple[list[int], list[float]]]:
        """:meth:`rank` for ``B`` requests from their user states ``[B, D]``: one head pass, one scoring matmul,
        one top-k; per request its own edit, ``k`` and exclusions."""
        scores = self.model.logits(self.head_batch(states, edits), self.scoring_items)
        rows: list[int] = []
        cols: list[int] = []
        for b, ex in enumerate(excludes):
            if ex:
                rows.extend([b] * len(ex))
                cols.extend(ex)
        if cols:
            scores[torch.tensor(rows), torch.tensor(cols)] = float("-inf")
        finite = torch.isfinite(scores).sum(dim=1).tolist()
        top = torch.topk(scores, min(max(ks), scores.size(1)), dim=1)
        ids, vals = top.indices.tolist(), top.values.tolist()
        out = []
        for b, k in enumerate(ks):
            k = min(k, finite[b])
            out.append((ids[b][:k], vals[b][:k]))
        return out


def _unbatched(edit: HeadEdit) -> bool:
    """An edit of ``[D, D]`` / ``[D]`` tensors, which applies to any number of rows as it is."""
    return all(w is None or w.dim() == 2 for w in edit.dW) and all(b is None or b.dim() == 1 for b in edit.db)
