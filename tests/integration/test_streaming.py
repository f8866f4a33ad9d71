"""1 GiB up and down through a router process: bytes intact, router memory bounded."""
import asyncio

import pytest

from tests.conftest import cluster_docs, router_doc, router_process, split_doc

GIB = 1 << 30
BLOCK = b"\x5a" * (256 * 1024)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def start_stream_backend():
    """GET /down streams 1 GiB; POST /up counts the body and answers with the count."""
    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith((b"GET /down", b"POST /up")):  # the router's probes
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    await writer.drain()
                    break
                if head.startswith(b"GET /down"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % GIB)
                    for _ in range(GIB // len(BLOCK)):
                        writer.write(BLOCK)
                        await writer.drain()
                else:
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    got = 0
                    while got < length:
                        got += len(await reader.read(min(1 << 20, length - got)))
                    body = str(got).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def router_proc(tmp_path):
    server, port = await start_stream_backend()
    (tmp_path / "c.yaml").write_text(cluster_docs({"a": port}) + split_doc({"a": 1}) +
                                     router_doc(limits={"maxBody": "2Gi"}))
    try:
        async with router_process(tmp_path) as rp:
            yield rp
    finally:
        server.close()
        await server.wait_closed()


async def sample_rss(pid: int, stop: asyncio.Event, peaks: list[float]):
    while not stop.is_set():
        peaks.append(rss_mb(pid))
        await asyncio.sleep(0.05)


async def test_one_gib_download_and_upload_in_bounded_memory(router_proc):
    base = rss_mb(router_proc.pid)
    stop, peaks = asyncio.Event(), []
    sampler = asyncio.create_task(sample_rss(router_proc.pid, stop, peaks))
    reader, writer = await asyncio.open_connection("127.0.0.1", router_proc.port, limit=1 << 20)
    try:
        writer.write(b"GET /down HTTP/1.1\r\nHost: h\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length: %d" % GIB in head
        got = 0
        while got < GIB:
            chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
            assert chunk
            got += len(chunk)
        assert got == GIB

        writer.write(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % GIB)
        for _ in range(GIB // len(BLOCK)):
            writer.write(BLOCK)
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        assert (await reader.readexactly(length)) == str(GIB).encode()
    finally:
        writer.close()
        stop.set()
        await sampler
    growth = max(peaks) - base
    print(f"router RSS: start {base:.1f} MB, peak {max(peaks):.1f} MB, growth {growth:.1f} MB")
    assert growth < 64, f"router memory grew {growth:.1f} MB while streaming 2 GiB"
