"""The per-user token bucket (serving.rate_limit); the live 429 is in test_hostile.py."""

from __future__ import annotations

from serving.rate_limit import BYTES_PER_TOKEN, UserRateLimit, request_cost


def test_a_burst_then_the_rate_per_user():
    limit = UserRateLimit(rate_per_s=2.0, burst=3)
    assert [limit.wait_s("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.wait_s("a", now=0.0) == 0.5  # empty: the next token in 1 / rate
    assert limit.wait_s("b", now=0.0) == 0.0  # another user is not affected
    assert limit.wait_s("a", now=0.5) == 0.0  # refilled one token
    assert limit.wait_s("a", now=0.5) > 0
    assert [limit.wait_s("a", now=100.0) for _ in range(4)][-1] > 0  # refills up to the burst, no further


def test_refused_requests_do_not_spend_tokens_and_users_are_bounded():
    limit = UserRateLimit(rate_per_s=1.0, burst=1, max_users=2)
    assert limit.wait_s("a", now=0.0) == 0.0
    for _ in range(5):
        assert limit.wait_s("a", now=0.0) == 1.0
    assert limit.wait_s("a", now=1.0) == 0.0
    limit.wait_s("b", now=1.0), limit.wait_s("c", now=1.0)  # "a" is the least recent of three: forgotten
    assert limit.wait_s("a", now=1.0) == 0.0  # back with a full bucket
    assert UserRateLimit.retry_after(0.2) == "1" and UserRateLimit.retry_after(2.5) == "3"


def test_large_bodies_cost_more_and_a_request_above_the_burst_empties_the_bucket():
    assert request_cost(None) == 1.0 and request_cost("bogus") == 1.0
    assert request_cost(str(BYTES_PER_TOKEN * 4)) == 5.0
    limit = UserRateLimit(rate_per_s=1.0, burst=10)
    assert limit.wait_s("a", cost=6.0, now=0.0) == 0.0
    assert limit.wait_s("a", cost=6.0, now=0.0) == 2.0  # 4 left: 2 s until 6
    assert limit.wait_s("b", cost=50.0, now=0.0) == 0.0  # more than the burst: admitted with a full bucket
    assert limit.wait_s("b", cost=1.0, now=0.0) == 1.0
