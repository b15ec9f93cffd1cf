"""What the cloud service asks of the adaptation stack: an :class:`Editor`.

``edit_many(asks)`` turns several devices' recent items (internal ids) into one :class:`EditPayload` each, in
one forward pass (``edit(item_ids)``: a batch of one); ``snapshot()`` gives the prototype bank for the device
cache. :func:`load_editor` returns the trained adapter + prototype bank (:class:`AdapterEditor`) when
``adapter_dir`` holds them, else :class:`BaseEditor` (no edit, empty bank), so the services also run from the
base model alone.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from llm_cloud.adapter import Adapter, left_padded_windows
from llm_cloud.context_hits import UserContextHits
from llm_cloud.prototype_online import absorb_rows, observe
from llm_cloud.prototypes import PrototypeBank, clipped_parts, is_ood, ood_scores
from recsys import ood, run_layout
from recsys.checkpoint import Loaded, load_checkpoint
from recsys.models import EditableSeqRec, HeadEdit
from recsys.wire import EditDecoder, EditPayload, Encoding, PrototypeSnapshot, pack


@dataclass(frozen=True)
class EditAsk:
    """One device's request: its recent items (internal ids), the wire encoding, the bank version it caches, and
    the user state ``[D]`` it computed for those items (None: not sent; an editor that needs it encodes them)."""

    item_ids: list[int]
    encoding: Encoding = "json"
    bank_version: str | None = None
    state: np.ndarray | None = None


class Editor(Protocol):
    version: str

    def edit_many(self, asks: list[EditAsk]) -> list[EditPayload]: ...

    def snapshot(self) -> PrototypeSnapshot: ...


def edit_one(editor: Editor, item_ids: list[int], encoding: Encoding = "json",
             bank_version: str | None = None) -> EditPayload:
    """One device's edit (a batch of one)."""
    return editor.edit_many([EditAsk(list(item_ids), encoding, bank_version)])[0]


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


class BaseEditor:
    """No adapter trained yet: every answer is "use the base head", and the bank is empty."""

    def __init__(self, checkpoint_dir: Path, dim: int):
        weights = Path(checkpoint_dir) / "model.pt"
        self.version = f"base-{_digest(weights) if weights.is_file() else 'none'}"
        self.dim = dim

    def edit_many(self, asks: list[EditAsk]) -> list[EditPayload]:
        return [EditPayload(version=self.version, prototype_id=None, layers=[]) for _ in asks]

    edit = edit_one

    def snapshot(self) -> PrototypeSnapshot:
        return PrototypeSnapshot(version=self.version, dim=self.dim)


class AdapterEditor:
    """The trained adapter + prototype bank: prototype edit + the device's clipped residual, one forward pass.

    An out-of-distribution window (the bank's :mod:`recsys.ood` score above its threshold) gets its own
    per-sample edit (``prototype_id = None``). The bank is read-only unless ``dynamic``: then a live copy
    learns from the traffic as ``served-dyn`` does offline (:func:`absorb`: answered windows refine their
    prototypes or open new ones; :func:`count_outcomes`: a history that grew by an item counts that item's
    outcome into the OOD score, each history once among the last ``remember``), and every
    ``publish_every`` answered histories the live bank becomes the served one, under a new version that
    devices refetch. A device is answered with the published bank it caches (``bank_version``, among the last
    ``keep`` published: their tensors only, the newest with its snapshot), so its ``code`` edits decode
    exactly until it has refetched; others get the newest.
    """

    def __init__(
        self,
        base: EditableSeqRec,
        adapter: Adapter,
        bank: PrototypeBank,
        code_table: torch.Tensor | None,
        version: str,
        context: UserContextHits | None = None,
        dynamic: bool = False,
        publish_every: int = 256,
        remember: int = 65_536,
        keep: int = 32,
    ):
        self.base, self.adapter, self.bank, self.code_table = base.eval(), adapter.eval(), bank, code_table
        self.context = context  # user-context hits computed from the device's window at edit time
        if adapter.context_sizes and context is None:
            raise ValueError("this adapter reads user-context hits: the editor needs its context artifacts")
        self.base_version = self.version = version
        self._snapshot = bank.snapshot(edit_decoder(adapter, bank), version)
        self._published = OrderedDict({version: bank})  # the last `keep` published banks
        self._keep = max(1, keep)
        self.live = bank.copy() if dynamic else None  # the loaded bank stays as built
        self.publish_every, self.published, self.outcomes, self._answered = max(1, publish_every), 0, 0, 0
        self._seen: OrderedDict[tuple[int, ...], None] = OrderedDict()
        self._remember = max(1, remember)

    @torch.inference_mode()
    def edit_many(self, asks: list[EditAsk]) -> list[EditPayload]:
        """The served edits of several histories, one batched :func:`served_edit` (each row as if alone).
        ``code`` (the window's per-layer code, decoded on the device) only when the device caches this bank
        (``bank_version``) and the adapter's maps are linear; else fp32."""
        base = self.base
        histories = [[i for i in ask.item_ids if 0 < i < base.n_items] for ask in asks]
        if self.live is not None:
            self._count(histories)
        groups: dict[str, list[int]] = {}  # bank version → rows answered with it
        for row, ask in enumerate(asks):
            groups.setdefault(ask.bank_version if ask.bank_version in self._published else self.version, []).append(row)
        payloads: list[EditPayload | None] = [None] * len(asks)
        for version, rows in groups.items():
            bank = self._published[version]
            seq, lengths = padded([histories[r][-base.max_seq_len :] for r in rows], base.max_seq_len)
            out = served_edit(base, self.adapter, bank, self.code_table, seq, lengths, self.context)
            for i, r in enumerate(rows):
                payloads[r] = self._payload(out, i, asks[r], version)
            if self.live is not None:
                absorb(self.live, out)
        if self.live is not None:
            self._answered += len(asks)
            if self._answered >= self.publish_every:
                self.publish()
        return payloads

    def publish(self) -> None:
        """The live bank becomes the served one (a new version: ``<loaded version>+<publications>``)."""
        bank, self._answered = self.live.copy(), 0
        self.published += 1
        version = f"{self.base_version}+{self.published}"
        snapshot = bank.snapshot(edit_decoder(self.adapter, bank), version)
        self._published[version] = bank
        while len(self._published) > self._keep:
            self._published.popitem(last=False)
        self.bank, self._snapshot, self.version = bank, snapshot, version

    def _count(self, histories: list[list[int]]) -> None:
        """Count the outcome of each history's last item (from the state before it), once per history."""
        T, done = self.base.max_seq_len, []
        for ids in histories:
            key = tuple(ids[-(T + 1) :])
            if len(ids) < 2 or key in self._seen:
                continue
            self._seen[key] = None
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
            done.append(ids)
        if not done:
            return
        seq, lengths = padded([ids[:-1][-T:] for ids in done], T)
        state = self.base.user_state(seq, lengths)
        count_outcomes(self.base, self.live, state, torch.tensor([ids[-1] for ids in done]))
        self.outcomes += len(done)

    edit = edit_one

    def _payload(self, out: Served, row: int, ask: EditAsk, version: str) -> EditPayload:
        proto = None if int(out.prototype[row]) < 0 else int(out.prototype[row])
        encoding = ask.encoding
        if encoding == "code":  # (every published bank has a decoder when the loaded one has)
            if self._snapshot.decoder is not None and ask.bank_version == version:
                return EditPayload.from_code(out.codes[row], version, proto, out.edit.clip, self.base.head.dim)
            encoding = "fp32"
        return EditPayload.from_head_edit(edit_row(out.edit, row), version, proto, encoding)

    def snapshot(self) -> PrototypeSnapshot:
        return self._snapshot


def count_outcomes(base: EditableSeqRec, bank: PrototypeBank, state: torch.Tensor, next_item: torch.Tensor,
                   logits: torch.Tensor | None = None) -> None:
    """A dynamic bank's OOD update once devices have consumed their next items (prequential): did the base
    model, at the state each was consumed from, leave it out of its top 10? Each outcome counts toward the
    nearest prototype (by signature) of that state (:func:`llm_cloud.prototype_online.observe`)."""
    with torch.no_grad():
        logits = base.logits(base.head(state, None)) if logits is None else logits
        observe(bank, bank.nearest_signature(state), ood.missed(logits, next_item))


def absorb(bank: PrototypeBank, served: Served) -> None:
    """A dynamic bank takes in the windows it has just answered (:func:`llm_cloud.prototype_online.absorb_rows`:
    an out-of-distribution one opens a new prototype, the others refine theirs). With :func:`count_outcomes`,
    the one dynamic update behind the cloud (``serve.cloud.dynamic_bank``) and the ``served-dyn`` / ``proto-dyn``
    methods."""
    absorb_rows(bank, served.assigned, served.prototype < 0, served.codes.flatten(1),
                served.edit.dW + served.edit.db, served.state)


@dataclass
class Served:
    edit: HeadEdit  # batched
    prototype: torch.Tensor  # [B] prototype id, -1 = the window's own edit (out of distribution)
    assigned: torch.Tensor  # [B] the assigned prototype (bank.cfg.assignment), out of distribution or not
    distance: torch.Tensor  # [B] code-space distance to the nearest prototype (or the assigned one: `distance`)
    ood_score: torch.Tensor  # [B] the bank's OOD score (recsys.ood; -inf: the bank has none)
    codes: torch.Tensor  # [B, L, code_dim] the windows' per-layer codes
    state: torch.Tensor  # [B, D] the base model's user states the edit applies to
    base_logits: torch.Tensor  # [B, n_items] the base head's scores (the OOD score's entropy, outcomes)


@torch.inference_mode()
def served_edit(
    base: EditableSeqRec,
    adapter: Adapter,
    bank: PrototypeBank,
    code_table: torch.Tensor | None,
    seq: torch.Tensor,
    length: torch.Tensor,
    context: UserContextHits | None = None,
    *,
    residual: bool = True,
    ood_override: bool = True,
    distance: Literal["nearest", "assigned"] = "nearest",
) -> Served:
    """The edit the cloud serves for each history (rows of ``seq``, ``length`` items each; 0 = empty).

    The assigned prototype's head edit plus the window's clipped residual; a window whose OOD score is
    above the bank's threshold gets its own clipped edit instead.
    The one implementation behind the cloud service and every prototype evaluation method (``served``, and
    the ``proto*`` methods through the options: ``residual=False`` serves ``E_k`` alone, ``ood_override=False``
    keeps the prototype's edit for out-of-distribution windows too, ``distance="assigned"`` reports the
    distance to the assigned prototype rather than the nearest — they differ under min-residual assignment).
    ``context`` gives the window's user-context hits (for an adapter that reads them).
    """
    state = base.user_state(seq, length.clamp(min=1))
    window = left_padded_windows(seq, length, adapter.cfg.window)
    codes = None if code_table is None or not adapter.code_sizes else code_table[window]
    hits = context(window) if context is not None and adapter.context_sizes else None
    layer_codes = adapter.layer_codes(adapter.sequence_code(window, codes, state, hits))
    sample = adapter.edits_from_codes(layer_codes, base)
    k, dist = _assign(bank, layer_codes.flatten(1), sample, distance)
    if residual:
        edit = bank.edit_for(k, sample, adapter.edits_from_codes(bank.centres[k].view_as(layer_codes), base))
    else:
        edit = bank.edit_for(k, None, None)
    _, score, base_logits = ood_scores(bank, base, state)
    proto = k
    if ood_override:
        far = is_ood(bank, score)
        own = clipped_parts(sample, adapter.cfg.clip)  # within ±adapter clip ≤ the bank's total clip
        parts = [torch.where(far.view(-1, *[1] * (p.dim() - 1)), m, p) for p, m in zip(edit.dW + edit.db, own)]
        edit, proto = HeadEdit(parts[: bank.n_layers], parts[bank.n_layers :], clip=edit.clip), torch.where(far, -1, k)
    return Served(edit, proto, k, dist, score, layer_codes, state, base_logits)


def _assign(bank: PrototypeBank, flat: torch.Tensor, sample: HeadEdit,
            distance: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window's prototype (``bank.cfg.assignment``) and its code-space distance to the nearest centre, or
    (``distance="assigned"``) to the assigned one."""
    k, dist = bank.assign_nearest(flat)
    if bank.cfg.assignment == "min-residual":
        k = bank.assign_min_residual(sample)
        if distance == "assigned":
            dist = (flat - bank.centres[k]).norm(dim=1)
    return k, dist


def edit_decoder(adapter: Adapter, bank: PrototypeBank) -> EditDecoder | None:
    """The adapter's code → edit maps for the device (None when they are not linear: low rank, or no anchor)."""
    if adapter.cfg.rank or not adapter.cfg.anchor:
        return None
    w = torch.stack([torch.cat([pw.weight, pb.weight]) for pw, pb in zip(adapter.proj_w, adapter.proj_b)])
    b = torch.stack([torch.cat([pw.bias, pb.bias]) for pw, pb in zip(adapter.proj_w, adapter.proj_b)])
    return EditDecoder(
        n_layers=adapter.n_layers, dim=adapter.dim, code_dim=adapter.cfg.code_dim, clip=adapter.cfg.clip,
        residual_clip=bank.cfg.residual_clip, total_clip=bank.cfg.total_clip, weights=pack(w, "<f4"),
        biases=pack(b, "<f4"), centres=pack(bank.centres, "<f4"), n_prototypes=bank.size,
    )  # fmt: skip


def edit_row(edit: HeadEdit, row: int) -> HeadEdit:
    """Row ``row`` of a batched edit (parts that are ``None`` stay ``None``)."""
    pick = lambda t: None if t is None else t[row]  # noqa: E731
    return HeadEdit([pick(w) for w in edit.dW], [pick(b) for b in edit.db], clip=edit.clip)


def padded(rows: list[list[int]], max_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[B, max_seq_len]`` item ids of histories of at most that many items, and their lengths."""
    seq = torch.zeros(len(rows), max_seq_len, dtype=torch.long)
    for row, ids in enumerate(rows):
        seq[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return seq, torch.tensor([len(ids) for ids in rows])


def load_editor(checkpoint_dir: Path, dim: int, adapter_dir: Path | None = None, dynamic: bool = False,
                publish_every: int = 256, keep: int = 32, read: Callable[[Path], Loaded] = load_checkpoint) -> Editor:
    """The best editor available for a base checkpoint (adapter + bank from ``adapter_dir`` when present;
    ``dynamic``: its bank learns from the traffic, published every ``publish_every`` answers, the last ``keep``
    published kept for the devices that cache them). The base checkpoint is read with ``read`` (one build shares
    one model per checkpoint: :func:`recsys.checkpoint.checkpoint_reader`).

    ``adapter_dir`` is an adapter directory written by ``persona adapter``; its bank is the one its run
    dir's manifest serves (:meth:`recsys.run_layout.Manifest.served_bank`; derived for old runs).
    """
    from llm_cloud.artifacts import load_adapter, load_bank, load_code_table, load_user_context

    adapter_dir = Path(adapter_dir) if adapter_dir else None
    if adapter_dir is None or not (adapter_dir / run_layout.ADAPTER_MARK).is_file():
        return BaseEditor(checkpoint_dir, dim)
    run = adapter_dir.parent
    variant = run_layout.read_manifest(run).served_bank()
    bank_dir = run_layout.bank_dir(run, variant) if variant else None
    if bank_dir is None or not (bank_dir / run_layout.BANK_MARK).is_file():
        return BaseEditor(checkpoint_dir, dim)
    base, _, _ = read(Path(checkpoint_dir))
    adapter, _ = load_adapter(adapter_dir)
    bank = load_bank(bank_dir)
    version = "persona-" + _digest(  # context_items.pt only where the adapter reads user context
        Path(checkpoint_dir) / "model.pt", adapter_dir / "adapter.pt", bank_dir / "bank.pt",
        adapter_dir / "context_items.pt",
    )
    context = load_user_context(adapter_dir) if adapter.context_sizes else None
    return AdapterEditor(base, adapter, bank, load_code_table(adapter_dir), version, context, dynamic, publish_every,
                         keep=keep)
