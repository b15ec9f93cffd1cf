"""The torch-free device runtime: :class:`recsys.runtime.DeviceRuntime`'s behaviour on the exported graphs.

Map item tokens, compute user states, assign the nearest cached prototype, apply the OOD rule and the
cache gate, decode received edits (``json``/``fp32``/``fp16``/``code``), rank the full catalogue with
exclusions. Method for method the same as the torch runtime (its ``rank_states`` / ``assign_batch`` /
``ood_flags`` split is what the device service calls), on numpy + onnxruntime alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from persona_device.model import OnnxModel
from persona_device.wire import Edit, Payload, Snapshot, check_snapshot, scoring_table


class OnnxDeviceRuntime:
    """A device's model on onnxruntime: states, prototype assignment, OOD flag, edits, rankings.

    More than 12 methods, on purpose: they are the steps of the one rank path the device service calls
    (``encode_histories`` → ``user_states`` (``empty_state``) → ``assign_batch`` / ``ood_flags`` →
    ``rank_states`` (``stacked``, ``exclusion_mask``)), the cached prototype bank those steps read
    (``set_prototypes``, ``prototype_edit``, ``decode_edit``, ``edit_encoding_ready``) and thin one-request
    wrappers of them (``user_state``, ``assign``, ``scores``, ``rank``), mirroring
    :class:`recsys.runtime.DeviceRuntime` method for method; split up, the one API would be scattered over
    objects both runtimes would have to mirror.
    """

    def __init__(self, model: OnnxModel, cache_gate: bool = True):
        self.model = model
        self.cache_gate = cache_gate  # serve a cached prototype's edit only where the snapshot's cache_ok allows
        self.item_tokens = model.item_tokens
        self.token_to_id = {str(t): i for i, t in enumerate(self.item_tokens) if i > 0}
        self.prototypes: Snapshot | None = None
        self._proto_edits: list[Edit | None] = []
        self._empty_state: np.ndarray | None = None

    @classmethod
    def load(cls, export_dir: Path, prototype_cache: Path | None = None, threads: int = 1) -> OnnxDeviceRuntime:
        runtime = cls(OnnxModel(export_dir, threads))
        if prototype_cache is not None and Path(prototype_cache).is_file():
            runtime.set_prototypes(Snapshot.load(prototype_cache))
        return runtime

    @property
    def n_items(self) -> int:
        return self.model.meta.n_items

    @property
    def max_seq_len(self) -> int:
        return self.model.meta.max_seq_len

    # ---- the cached bank and received edits --------------------------------------------------------

    def set_prototypes(self, snapshot: Snapshot) -> None:
        """Cache ``snapshot``: its prototypes' edits and its item delta (scored with from now on), all or nothing."""
        check_snapshot(snapshot, self.model.meta.dim)
        edits = [e.dense_edit() for e in snapshot.edits]  # decoded before swapping: never half-updated
        delta = snapshot.item_delta
        table = self.model.items if delta is None else scoring_table(self.model.items, delta)
        self.prototypes, self._proto_edits, self.model.scoring_items = snapshot, edits, table

    def decode_edit(self, payload: Payload | dict) -> Edit | None:
        """A received edit as arrays (``code`` edits through the cached snapshot's decoder)."""
        payload = payload if isinstance(payload, Payload) else Payload.from_dict(payload)
        if payload.encoding != "code":
            return payload.dense_edit()
        snap = self.prototypes
        if snap is None or snap.version != payload.version:
            raise ValueError(f"code edit of version {payload.version} but the cached bank is "
                             f"{snap.version if snap else 'missing'}")  # fmt: skip
        if payload.data is None:
            return None
        if snap.decoder is None:
            raise ValueError("a code-encoded edit needs the prototype snapshot's decoder")
        return snap.decoder.decode(payload, self._proto_edits)

    @property
    def edit_encoding_ready(self) -> str | None:
        """The cached bank version against which ``code`` edits can be decoded (None: ask for dense)."""
        snap = self.prototypes
        return snap.version if snap is not None and snap.decoder is not None else None

    def prototype_edit(self, k: int | None) -> Edit | None:
        """Prototype ``k``'s cached edit as served on its own: None where ``cache_ok`` says it did not gain."""
        if k is None:
            return None
        ok = self.prototypes.cache_ok if self.prototypes is not None and self.cache_gate else None
        return self._proto_edits[k] if ok is None or ok[k] else None

    # ---- user states, prototypes, the OOD flag ------------------------------------------------------

    def encode_histories(self, histories: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ``[B, T]`` sequences (each the last ``max_seq_len`` valid items) and their lengths."""
        T, n = self.max_seq_len, self.n_items
        seq = np.zeros((len(histories), T), np.int64)
        lengths = np.ones(len(histories), np.int64)
        for row, item_ids in enumerate(histories):
            ids = [i for i in item_ids if 0 < i < n][-T:]
            seq[row, : len(ids)] = ids
            lengths[row] = max(len(ids), 1)
        return seq, lengths

    def user_states(self, histories: list[list[int]]) -> np.ndarray:
        """``[B, D]`` user states, the rows padded to the longest history (as the torch model trims them);
        an empty history's state is the one of an all-padding window of full width."""
        seq, lengths = self.encode_histories(histories)
        empty = seq[:, 0] == 0
        if not empty.any():
            return self.model.user_states(seq[:, : int(lengths.max())], lengths)
        out = np.empty((len(seq), self.model.meta.dim), np.float32)
        if empty.any():
            out[empty] = self.empty_state()
        if not empty.all():
            full, length = seq[~empty], lengths[~empty]
            out[~empty] = self.model.user_states(full[:, : int(length.max())], length)
        return out

    def empty_state(self) -> np.ndarray:
        if self._empty_state is None:
            T = self.max_seq_len
            self._empty_state = self.model.user_states(np.zeros((1, T), np.int64), np.ones(1, np.int64))[0]
        return self._empty_state

    def user_state(self, item_ids: list[int]) -> np.ndarray:
        return self.user_states([item_ids])[0]

    def assign_batch(self, states: np.ndarray) -> tuple[list[int | None], list[float]]:
        """Nearest prototype signature (Euclidean) of each row and its distance; ``None``/inf without a bank."""
        if self.prototypes is None or not self.prototypes.size:
            return [None] * len(states), [float("inf")] * len(states)
        dist = np.sqrt(((states[:, None, :] - self.prototypes.signatures[None]) ** 2).sum(-1))
        k = dist.argmin(1)
        return k.tolist(), dist[np.arange(len(k)), k].tolist()

    def assign(self, state: np.ndarray) -> tuple[int | None, float]:
        protos, dists = self.assign_batch(state.reshape(1, -1))
        return protos[0], dists[0]

    def ood_flags(self, states: np.ndarray, protos: list[int | None]) -> list[bool]:
        """Per row: out of distribution by the cached bank's score (its base-head entropy and prototype)?"""
        rule = self.prototypes.ood if self.prototypes is not None else None
        if rule is None or not protos or protos[0] is None:
            return [False] * len(states)
        no_exclusions = np.zeros((len(states), self.n_items), bool)
        return rule.flags(self.model.rank(states, *self.model.no_edit(len(states)), no_exclusions).entropy, protos)

    # ---- ranking ------------------------------------------------------------------------------------

    def scores(self, item_ids: list[int], edit: Edit | None = None) -> np.ndarray:
        """Scores of every item ``[n_items]`` (padding id at ``-inf``)."""
        states = self.user_states([item_ids])
        return self.model.rank(states, *self.stacked([edit]), np.zeros((1, self.n_items), bool)).scores[0]

    def rank(
        self, item_ids: list[int], k: int, exclude: set[int] | None = None, edit: Edit | None = None
    ) -> tuple[list[int], list[float]]:
        """Top-``k`` item ids and scores over the full catalogue, ``exclude`` removed."""
        return self.rank_states(self.user_states([item_ids]), [edit], [k], [exclude])[0]

    def rank_states(
        self, states: np.ndarray, edits: list[Edit | None], ks: list[int], excludes: list[set[int] | None]
    ) -> list[tuple[list[int], list[float]]]:
        """:meth:`rank` for ``B`` requests from their states ``[B, D]``: one ranker run, per row its own edit,
        ``k`` and exclusions; a ``k`` beyond the graph's top-K is cut from the scores."""
        mask = self.exclusion_mask(excludes)
        wide = max(ks, default=0) > self.model.meta.top_k
        out = self.model.rank(states, *self.stacked(edits), mask, scores=wide)
        rankable = self.n_items - 1 - mask[:, 1:].sum(1)  # every real item not excluded (the padding id never)
        results = []
        for b, k in enumerate(ks):
            k = min(k, int(rankable[b]))
            if k <= self.model.meta.top_k:
                ids, vals = out.top_ids[b, :k], out.top_scores[b, :k]
            else:
                ids = np.argsort(-out.scores[b], kind="stable")[:k]
                vals = out.scores[b, ids]
            results.append((ids.tolist(), vals.tolist()))
        return results

    def stacked(self, edits: list[Edit | None]) -> tuple[np.ndarray, np.ndarray]:
        """``[B, L, D, D]`` / ``[B, L, D]`` clipped edits of the rows (zeros: the base head)."""
        dW, db = self.model.no_edit(len(edits))
        m = self.model.meta
        for row, edit in enumerate(edits):
            if edit is not None:
                dW[row], db[row] = edit.stacked(m.n_layers, m.dim)
        return dW, db

    def exclusion_mask(self, excludes: list[set[int] | None]) -> np.ndarray:
        mask = np.zeros((len(excludes), self.n_items), bool)
        for row, ex in enumerate(excludes):
            if ex:
                mask[row, sorted(ex)] = True
        return mask
