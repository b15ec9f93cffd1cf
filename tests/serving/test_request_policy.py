"""The request policy: its rate, which decisions ask, and the device asking the cloud by it over real HTTP."""

from __future__ import annotations

import random

import httpx
import pytest

from serving.request_policy import RequestPolicy
from tests.serving.conftest import AUTH, RandomEditor, rank, serve_config, wait_for
from tests.serving.test_services import LiveServer, cloud_app, device_app, post_events


@pytest.mark.parametrize("kind", ["drift", "random"])
@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5])
def test_the_asked_share_is_the_target_rate(kind, rate):
    rng = random.Random(1)
    policy = RequestPolicy(kind, rate, window=256, seed=3)
    for _ in range(4000):
        policy.ask(rng.expovariate(1.0))
    assert policy.share == pytest.approx(rate, abs=0.02)


def test_drift_asks_for_the_largest_drifts():
    rng = random.Random(2)
    policy = RequestPolicy("drift", 0.1, window=256)
    asked, skipped = [], []
    for _ in range(3000):
        signal = rng.random()
        (asked if policy.ask(signal) else skipped).append(signal)
    assert min(asked[100:]) > 0.75 and max(skipped) < 0.95  # the threshold sits near the 0.9 quantile


def test_rate_zero_never_asks_rate_one_always_and_no_reference_asks():
    never, always = RequestPolicy("drift", 0.0), RequestPolicy("random", 1.0)
    assert not any(never.ask(s) for s in (0.0, 5.0, float("inf")))
    assert all(always.ask(0.0) for _ in range(100))
    drift = RequestPolicy("drift", 0.05)
    for _ in range(100):
        drift.ask(1.0)
    assert drift.ask(float("inf"))


@pytest.mark.parametrize("kind, rate", [("drift", -0.1), ("drift", 1.5), ("often", 0.5)])
def test_bad_policy_is_refused(kind, rate):
    with pytest.raises(ValueError, match="request"):
        RequestPolicy(kind, rate)


def _events_through_a_live_device(checkpoint, runtime, tmp_path, n_items: int, *overrides: str):
    """One user's ``n_items`` events, each followed by a ranking, through a real device and cloud (drift policy,
    2 s budget): the adaptation of each ranking, the cloud's edit calls, and one more ranking with nothing new
    (its adaptation and the calls after it)."""
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    editor = RandomEditor(dim, n_layers)
    cfg = serve_config(checkpoint, tmp_path, "serve.device.request_policy=drift", "serve.device.budget_ms=2000",
                       *overrides)
    capp, _ = cloud_app(cfg, lambda: editor)
    items = [str(t) for t in runtime.item_tokens[1 : 1 + n_items]]
    client = httpx.Client(timeout=10, headers=AUTH)
    with LiveServer(capp) as cloud, LiveServer(device_app(cfg, cloud.url)) as dev, client as c:
        wait_for(lambda: c.get(f"{dev.url}/healthz").json()["prototypes"] == 3)
        kinds = []
        for n, item in enumerate(items):
            post_events(c, dev.url, "carol", [item], start=n)
            kinds.append(rank(c, dev.url, user_id="carol", k=10).json()["adaptation"])
        calls = editor.calls
        again = rank(c, dev.url, user_id="carol", k=10).json()["adaptation"]
    return kinds, calls, again, editor.calls


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_the_device_asks_the_cloud_as_its_policy_says(checkpoint, runtime, tmp_path, rate):
    kinds, calls, again, calls_after = _events_through_a_live_device(
        checkpoint, runtime, tmp_path, 11, f"serve.device.request_rate={rate}")
    assert calls_after == calls  # nothing new: no new decision
    if rate == 0.0:
        assert calls == 0 and set(kinds) == {"prototype-cache"} and again == "prototype-cache"
    else:
        assert calls == len(kinds) and set(kinds) == {"cloud-edit"} and again == "cloud-edit"


def test_drift_asks_new_devices_first_and_keeps_the_rate():
    rng = random.Random(4)
    policy = RequestPolicy("drift", 0.1, window=256)
    new = [policy.ask(float("inf")) for _ in range(10)]  # ten devices without an edit
    assert all(new)
    for _ in range(3000):
        policy.ask(float("inf") if rng.random() < 0.03 else rng.random())  # 3 % new devices
    assert policy.share == pytest.approx(0.1, abs=0.02)


@pytest.mark.parametrize("max_age", [None, 2])
def test_a_stale_cloud_edit_gives_way_to_the_cached_bank(checkpoint, runtime, tmp_path, max_age):
    """``serve.device.edit_max_age``: while the policy does not ask again, a user's cloud edit is served for at most
    that many of its new events; then the device's own fallback (here the prototype cache)."""
    extra = [] if max_age is None else [f"serve.device.edit_max_age={max_age}"]
    kinds, calls, _, _ = _events_through_a_live_device(checkpoint, runtime, tmp_path, 6,
                                                       "serve.device.request_rate=0.01", *extra)  # fmt: skip
    assert calls == 1  # the first event (no edit yet) asks; the low rate asks no more
    if max_age is None:
        assert kinds == ["cloud-edit"] * len(kinds)
    else:
        assert kinds == ["cloud-edit"] * max_age + ["prototype-cache"] * (len(kinds) - max_age)
