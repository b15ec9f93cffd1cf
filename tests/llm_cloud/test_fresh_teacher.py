"""The fresh teacher: refreshed on the stream without look-ahead, and it learns what the stream brings."""

from __future__ import annotations

import copy

import numpy as np
import torch

from llm_cloud.fresh_teacher import FreshTeacher, RefreshConfig, mark_seen, segments
from llm_cloud.stream import StreamRows
from llm_cloud.teacher import EnsembleTeacher
from recsys.config import ModelConfig
from recsys.item_side import ItemSide
from recsys.models import EditableSeqRec
from tests.llm_cloud.test_teacher import N_ITEMS, TOKENS, D, T, histories, tiny_model

CFG = RefreshConfig(every_events=40, epochs=2, lr=1e-2, batch_size=16, replay=1.0)


def stream(n: int = 200, seed: int = 0, hot: int | None = None) -> StreamRows:
    seq, length = histories(n, seed)
    g = np.random.default_rng(seed)
    target = torch.from_numpy(g.integers(1, N_ITEMS, n))
    if hot is not None:  # the stream keeps bringing one item
        target[::2] = hot
    time = np.sort(g.integers(0, n // 2, n)).astype(np.float64)  # ties across segment borders included
    return StreamRows(seq, length, target, time, g.integers(0, 20, n))


def teacher() -> EnsembleTeacher:
    return EnsembleTeacher([tiny_model("sasrec", 0), tiny_model("gru4rec", 1)], TOKENS, ["a", "b"])


def replay() -> list[np.ndarray]:
    g = np.random.default_rng(9)
    return [g.integers(1, N_ITEMS, 12) for _ in range(10)]


def states_by_version(rows: StreamRows, first: int) -> list[tuple]:
    fresh = FreshTeacher(teacher(), replay(), CFG)
    return [(v.start, v.valid_from, v.trained_until, [copy.deepcopy(m.state_dict()) for m in v.teacher.models])
            for v in fresh.versions(rows, first)]  # fmt: skip


def test_a_version_never_sees_an_event_at_or_after_the_rows_it_serves():
    rows = stream()
    runs = states_by_version(rows, first=40)
    assert len(runs) == len(segments(len(rows), 40, CFG.every_events)) == 4
    for start, valid_from, trained_until, _ in runs:
        assert valid_from == rows.time[start] and trained_until < valid_from
        assert trained_until == rows.time[rows.before(valid_from) - 1]
    # the proof: rewrite every event at or after version k's time; version k's weights do not change
    for k, (_, valid_from, _, states) in enumerate(runs):
        later = rows.before(valid_from)
        changed = stream(seed=5)
        rewritten = StreamRows(torch.cat([rows.seq[:later], changed.seq[later:]]),
                               torch.cat([rows.length[:later], changed.length[later:]]),
                               torch.cat([rows.target[:later], changed.target[later:]]), rows.time, rows.user)
        again = states_by_version(rewritten, first=40)[k][3]
        for mine, theirs in zip(states, again):
            # a version that read a rewritten event would move by ~lr (1e-2); reductions may differ in the last bits
            assert all(torch.allclose(mine[n], theirs[n], atol=1e-3) for n in mine), k
    assert not all(torch.equal(a, b) for a, b in zip(runs[0][3][0].values(), runs[-1][3][0].values()))


def test_the_first_version_of_a_stream_from_its_start_is_the_checkpoint():
    rows = stream()
    base = teacher()
    before = [copy.deepcopy(m.state_dict()) for m in base.models]
    first = next(FreshTeacher(base, replay(), CFG).versions(rows, 0))
    assert first.trained_until is None
    assert all(torch.equal(before[0][n], first.teacher.models[0].state_dict()[n]) for n in before[0])


def test_refreshing_learns_what_the_stream_brings():
    hot = N_ITEMS - 1
    rows = stream(n=400, seed=1, hot=hot)
    frozen, fresh = teacher(), FreshTeacher(teacher(), replay(), CFG)
    fresh.advance(rows, 300)
    probe_seq, probe_len = rows.seq[300:], rows.length[300:]
    p_frozen = frozen.log_probs(probe_seq, probe_len)[:, hot].exp().mean()
    p_fresh = fresh.teacher.log_probs(probe_seq, probe_len)[:, hot].exp().mean()
    assert p_fresh > 5 * p_frozen, (float(p_fresh), float(p_frozen))


def test_a_new_item_starts_from_its_llm_view():
    torch.manual_seed(0)
    vectors = torch.randn(N_ITEMS, 8)
    seen = torch.ones(N_ITEMS, dtype=torch.bool)
    seen[-3:] = False
    m = ModelConfig(hidden_size=D, inner_size=32, n_layers=1, head_layers=2, dropout=0.0, item_side="fused")
    model = EditableSeqRec("sasrec", m, N_ITEMS, T, ItemSide(vectors, None, seen)).eval()
    with torch.no_grad():
        model.encoder.item_embedding.weight.normal_()
        before = model.item_embeddings.clone()
    assert mark_seen(model, torch.tensor([N_ITEMS - 1, 1, 0])) == 1
    with torch.no_grad():
        after = model.item_embeddings
    assert bool(model.side.seen[-1]) and torch.allclose(after, before)  # same scores until it trains


def test_a_refresh_is_reproducible_with_dropout():
    rows = stream()

    def refreshed(global_seed: int):
        members = teacher()
        for m in members.models:
            for mod in m.modules():
                if isinstance(mod, torch.nn.Dropout):
                    mod.p = 0.3
        torch.manual_seed(global_seed)  # whatever the global random state before the refresh
        fresh = FreshTeacher(members, replay(), CFG)
        fresh.advance(rows, 100)
        return fresh.teacher.models[0].state_dict()

    a, b = refreshed(1), refreshed(2)
    # the same dropout masks; float reductions may still differ in the last bits between runs
    assert all(torch.allclose(a[n], b[n], atol=1e-3) for n in a), [(n, float((a[n] - b[n]).abs().max())) for n in a]
