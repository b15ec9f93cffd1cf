"""The emulated device↔cloud link (serving.link_emulator.Link): a real asyncio TCP echo server on 127.0.0.1 behind
it; bytes pass unchanged and are counted each way, the delay and the shared bandwidth cap hold them back."""

from __future__ import annotations

import asyncio
import time

from serving.link_emulator import Link
from serving.local_services import free_port


async def echo_server() -> asyncio.base_events.Server:
    async def handle(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def round_trip(port: int, payload: bytes) -> tuple[bytes, float]:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    got = await reader.readexactly(len(payload))
    seconds = time.perf_counter() - t0
    writer.close()
    return got, seconds


def run(coro):
    return asyncio.run(coro)


def test_bytes_pass_unchanged_and_are_counted_each_way():
    async def go():
        server = await echo_server()
        async with Link(server.sockets[0].getsockname()[1]) as link:
            got, _ = await round_trip(link.port, b"x" * 1000 + b"end")
            await asyncio.sleep(0.05)
            counted = dict(link.bytes)
        server.close()
        return got, counted

    got, counted = run(go())
    assert got == b"x" * 1000 + b"end"
    assert counted == {"up": 1003, "down": 1003}


def test_the_delay_holds_each_direction_back():
    async def go():
        server = await echo_server()
        upstream = server.sockets[0].getsockname()[1]
        async with Link(upstream) as fast, Link(upstream, delay_s=0.1) as slow:
            _, quick = await round_trip(fast.port, b"ping")
            _, late = await round_trip(slow.port, b"ping")
        server.close()
        return quick, late

    quick, late = run(go())
    assert late >= 0.2  # 0.1 s up + 0.1 s down
    assert late > quick + 0.15


def test_the_bandwidth_cap_is_shared_by_the_links_connections():
    async def go():
        server = await echo_server()
        async with Link(server.sockets[0].getsockname()[1], bits_per_s=100_000) as link:
            _, alone = await round_trip(link.port, b"y" * 2500)  # 0.2 s each way at 100 kbit/s
            both = await asyncio.gather(round_trip(link.port, b"a" * 2500), round_trip(link.port, b"b" * 2500))
        server.close()
        return alone, [s for _, s in both], [g for g, _ in both]

    alone, both, echoed = run(go())
    assert alone >= 0.4
    assert echoed == [b"a" * 2500, b"b" * 2500]
    assert max(both) >= 0.55  # the two share one cap: the later one waits for the other's bytes
    assert max(both) > alone + 0.1


def test_a_dead_upstream_closes_the_devices_connection():
    async def go():
        async with Link(free_port()) as link:  # nothing listens upstream
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            got = await asyncio.wait_for(reader.read(100), timeout=5)
            writer.close()
            return got, dict(link.bytes)

    got, counted = run(go())
    assert got == b"" and counted == {"up": 0, "down": 0}
