"""serving.metrics: one registry per service, the samples a /metrics page holds, and every worker's counts summed
when they share a multiprocess directory (real worker processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from serving.metrics import MULTIPROC_ENV, Metrics, read_samples

ROOT = Path(__file__).resolve().parents[2]


def _value(samples, name: str, **labels) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def test_requests_and_latencies_are_counted_per_service_and_route():
    device, cloud = Metrics("device"), Metrics("cloud")
    for status in (200, 200, 422):
        device.observe_request("/v1/rank", "POST", status, 0.003)
    device.adaptation.labels("cloud-edit").inc()
    samples = read_samples(device.render().decode())
    assert _value(samples, "persona_requests_total", route="/v1/rank", status="200") == 2
    assert _value(samples, "persona_requests_total", status="422", service="device") == 1
    assert _value(samples, "persona_request_seconds_count", route="/v1/rank") == 3
    assert _value(samples, "persona_request_seconds_bucket", route="/v1/rank", le="0.005") == 3
    assert _value(samples, "persona_rank_adaptation_total", adaptation="cloud-edit") == 1
    assert not any(n.endswith("_created") for n, _, _ in samples)
    assert _value(read_samples(cloud.render().decode()), "persona_requests_total") == 0  # its own registry
    assert device.content_type.startswith("text/plain")


WORKER = """
import sys
from serving.metrics import Metrics
m = Metrics("device")
for _ in range(int(sys.argv[1])):
    m.observe_request("/v1/events", "POST", 200, 0.001)
if len(sys.argv) > 2:
    sys.stdout.write(m.render().decode())
"""


def test_workers_sharing_a_multiprocess_directory_are_summed(tmp_path):
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}  # as the worker supervisor sets it before spawning

    def run(*args: str) -> str:
        out = subprocess.run([sys.executable, "-c", WORKER, *args], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    run("3")
    run("4")
    page = run("5", "render")
    assert _value(read_samples(page), "persona_requests_total", route="/v1/events") == 12
