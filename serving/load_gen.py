"""A closed-loop HTTP/1.1 load generator for the services on 127.0.0.1, and the latency percentiles it reports.

:func:`load` keeps ``concurrency`` keep-alive connections busy (each sends its next POST when the last answer
is in) until ``n`` requests or ``max_seconds``; it is the benchmarks' client (``benchmarks/serve_load.py``,
``serve_load_cloud.py``), written on asyncio streams so that the client costs little beside the server.
"""

from __future__ import annotations

import asyncio
import time


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values`` as the nearest rank (no interpolation); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def ms(seconds: float | None, digits: int = 3) -> float | None:
    """Seconds as milliseconds, rounded (None stays None)."""
    return None if seconds is None else round(seconds * 1e3, digits)


async def load(
    port: int, bodies: list[bytes], n: int, concurrency: int, max_seconds: float, path: str = "/v1/rank",
    headers: str = "",
) -> dict:
    """Closed-loop HTTP/1.1 keep-alive client: ``concurrency`` connections share ``n`` POSTs of ``bodies`` (in
    turn) to ``path`` on ``127.0.0.1:port``. ``headers``: extra header lines, each ending in CRLF (e.g. a key).

    Returns the requests answered, the non-200 answers and failed connections (``errors``, the first three as
    ``error_samples``), the wall time, p50 / p99 latency (ms) and requests per second.
    """
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    deadline = time.monotonic() + max_seconds

    async def conn(cid: int) -> None:
        nonlocal issued
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while issued < n and time.monotonic() < deadline:
                body = bodies[issued % len(bodies)]
                issued += 1
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                t0 = time.perf_counter()
                writer.write(head + body)
                status = (await reader.readline()).split(b" ", 2)
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                payload = await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                if len(status) < 2 or status[1] != b"200":
                    errors.append(payload[:200].decode(errors="replace"))
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors.append(f"connection {cid}: {exc!r}")
        finally:
            if writer is not None:
                writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn(i) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:3],
        "seconds": round(wall, 3),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "req_per_s": round(len(latencies) / wall, 1),
    }
