"""The replay's scoring (recipes.replay): known ranks give known metrics, row-by-row comparisons count mismatches,
seeds summarise as mean ± sample std, and the replayed rows are a seeded, time-ordered share of the users."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recipes.replay import (
    K,
    adaptation_shares,
    chosen_rows,
    first_histories,
    mean_std,
    metrics_of,
    row_by_row,
    served_rank,
    summarise,
    target_ranks,
)


def test_known_ranks_give_known_metrics():
    got = metrics_of([0, 1, 3, 10, 57])  # 0-based: top, second, fourth, just outside the top 10, far outside
    assert got["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 5)
    assert got["hit@10"] == pytest.approx(3 / 5)
    assert got["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 5)
    assert metrics_of(np.array([9]))["hit@10"] == 1.0 and metrics_of(np.array([9]), k=5)["hit@5"] == 0.0


def test_the_rank_in_a_served_list():
    served = [f"i{n}" for n in range(10)]
    assert served_rank(served, "i0") == 0 and served_rank(served, "i7") == 7
    assert served_rank(served, "missing") == K
    assert served_rank(served, "i7", k=5) == 5  # outside the top 5: k


def test_target_ranks_leave_the_padding_column_out_and_count_only_strictly_higher_scores():
    logits = torch.tensor([[9.0, 1.0, 5.0, 3.0, 5.0],  # target 3: items 2 and 4 higher (padding 0 ignored)
                           [9.0, 1.0, 5.0, 3.0, 5.0]])  # target 2: ties with item 4, not above it  # fmt: skip
    assert target_ranks(logits, torch.tensor([3, 2])).tolist() == [2, 0]
    assert logits[0, 0] == 9.0  # the caller's scores are left as they were


def test_row_by_row_counts_same_ranks_and_the_paired_ndcg_difference():
    replayed = [0, 2, K, K, 4]
    offline = np.array([0, 3, 15, K, 4])  # 15 is outside the top 10: the same as the replay's K
    got = row_by_row(replayed, offline)
    ndcg = lambda r: 1 / math.log2(r + 2) if r < K else 0.0  # noqa: E731
    d = np.array([ndcg(a) - ndcg(min(b, K)) for a, b in zip(replayed, offline)])
    assert got["rows"] == 5 and got["same_rows"] == 4 and got["same_rank"] == pytest.approx(0.8)
    assert got["ndcg_diff"] == pytest.approx(d.mean())
    assert got["ndcg_diff_se"] == pytest.approx(d.std(ddof=1) / math.sqrt(5))
    same = row_by_row([1, 2, 3], np.array([1, 2, 3]))
    assert same["same_rows"] == 3 and same["ndcg_diff"] == 0.0 and same["ndcg_diff_se"] == 0.0


def test_mean_std_is_over_seeds_with_the_sample_standard_deviation():
    assert mean_std([0.1, 0.2, 0.3]) == "0.2000 ± 0.1000"
    assert mean_std([0.05]) == "0.0500 ± 0.0000"


def test_summarise_lists_each_conditions_numbers_over_the_seeds_that_ran_it():
    def cond(ndcg: float, p50: float) -> dict:
        return {"ndcg@10": ndcg, "hit@10": 2 * ndcg, "mrr@10": ndcg / 2, "cloud_requests_per_event": 1.0,
                "downlink_bytes_per_edit": 300.0, "p50_ms": p50, "p99_ms": 2 * p50, "non_200": 0,
                "adaptation": {"cloud-edit": 1.0, "prototype-cache": 0.0, "base": 0.0, "error": 0.0}}  # fmt: skip

    per_seed = [{"conditions": {"exact": cond(0.07, 30.0), "slow": cond(0.06, 110.0)}},
                {"conditions": {"exact": cond(0.08, 32.0)}}]  # fmt: skip
    got = summarise(per_seed, ["exact", "slow"])
    assert got["exact"]["ndcg@10"] == [0.07, 0.08] and got["exact"]["p50_ms"] == [30.0, 32.0]
    assert got["slow"]["ndcg@10"] == [0.06]
    assert got["exact"]["adaptation"]["cloud-edit"] == [1.0, 1.0]
    assert mean_std(got["exact"]["ndcg@10"]) == "0.0750 ± 0.0071"


def test_adaptation_shares():
    got = adaptation_shares(["cloud-edit", "cloud-edit", "base", "error"])
    assert got == {"cloud-edit": 0.5, "prototype-cache": 0.0, "base": 0.25, "error": 0.25}


def test_chosen_rows_are_a_seeded_share_of_the_users_in_time_order():
    users = np.array([1, 2, 3, 4, 1, 2, 3, 4, 1])
    times = np.array([5.0, 1.0, 2.0, 9.0, 5.0, 3.0, 4.0, 9.5, 6.0])  # each user's rows in time order; user 1's tie
    idx = chosen_rows(users, times, 0.5, seed=0)
    picked = set(users[idx].tolist())
    assert len(picked) == 2 and (np.diff(times[idx]) >= 0).all()
    for u in picked:  # each chosen user's rows all there, in their order
        assert [i for i in idx if users[i] == u] == [i for i in range(len(users)) if users[i] == u]
    assert chosen_rows(users, times, 0.5, seed=0).tolist() == idx.tolist()  # seeded
    assert len(set(users[chosen_rows(users, times, 0.01, seed=0)].tolist())) == 1  # at least one user


def test_first_histories_and_the_share_of_consistent_later_rows():
    tokens = [f"t{i}" for i in range(10)]
    seq = torch.tensor([[1, 2, 0, 0], [1, 2, 3, 0], [5, 0, 0, 0], [4, 4, 4, 0]])
    length = torch.tensor([2, 3, 1, 3])
    target = torch.tensor([3, 6, 7, 1])
    # a's second row is its first history + first target (consistent); b's second row is not
    history, consistent = first_histories(["a", "a", "b", "b"], seq, length, target, tokens)
    assert history == {"a": ["t1", "t2"], "b": ["t5"]}
    assert consistent == 0.5
    assert first_histories(["a"], seq[:1], length[:1], target[:1], tokens)[1] == 1.0  # no later row
