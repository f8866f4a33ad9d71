"""The lab's pieces on real sockets: the WAN relay's faults and a simulated cluster's life cycle."""
import asyncio
import time

import aiohttp
import pytest

from chaos.lab.cluster import NAMESPACE, SimCluster
from chaos.lab.config import lab_from_dict
from chaos.relay import Bandwidth, DelayRelay, Latency, LimitData, ResetPeer
from tests.conftest import wait_for


@pytest.fixture
async def source():
    """A server that answers each line `N` with N bytes, and echoes anything else."""
    async def handle(reader, writer):
        try:
            while line := await reader.readline():
                text = line.strip()
                writer.write(b"x" * int(text) if text.isdigit() else line)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def relay(source):
    r = DelayRelay(("127.0.0.1", source))
    await r.start()
    yield r
    await r.stop()


async def ask(port: int, line: bytes, want: int, timeout_s: float = 3.0) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t = time.monotonic()
    writer.write(line)
    data = b""
    try:
        while len(data) < want:
            chunk = await asyncio.wait_for(reader.read(65536), timeout_s)
            if not chunk:
                break
            data += chunk
    finally:
        writer.close()
    return data, time.monotonic() - t


async def test_latency_and_bandwidth(relay):
    relay.set_toxic("latency", Latency(0.05))
    data, took = await ask(relay.port, b"ping\n", 5)
    assert data == b"ping\n" and took >= 0.1  # 50 ms each way
    relay.clear_toxic("latency")
    relay.set_toxic("bandwidth", Bandwidth(200_000))
    data, took = await ask(relay.port, b"100000\n", 100_000)
    assert len(data) == 100_000 and took >= 0.45


async def test_limit_data_cuts_the_stream_and_closes(relay):
    relay.set_toxic("limit_data", LimitData(3000))
    data, _ = await ask(relay.port, b"10000\n", 10_000)
    assert len(data) == 3000  # then EOF: a truncated response


async def test_reset_peer_and_blackhole(relay):
    relay.set_toxic("reset_peer", ResetPeer(0.0))
    with pytest.raises(ConnectionResetError):
        await ask(relay.port, b"ping\n", 5)
    relay.clear_toxic("reset_peer")
    relay.blackhole = True
    with pytest.raises(asyncio.TimeoutError):
        await ask(relay.port, b"ping\n", 5, timeout_s=0.3)  # silence, no reset
    relay.blackhole = False
    assert (await ask(relay.port, b"ping\n", 5))[0] == b"ping\n"


async def test_a_refusing_link_comes_back_on_the_same_port(relay):
    port = relay.port
    await relay.refuse()
    with pytest.raises(OSError):
        await ask(port, b"ping\n", 5)
    await relay.accept_again()
    assert relay.port == port and (await ask(port, b"ping\n", 5))[0] == b"ping\n"


def small_lab():
    return lab_from_dict({"clusters": [{"name": "east", "city": "Tokyo"}],
                          "coldStart": {"cached": "300ms", "uncached": "900ms"}, "idleGrace": "1500ms",
                          "autoscaleWindow": "500ms",
                          "services": [{"name": "api", "handler": "5ms", "concurrency": 5, "cachedIn": []}]})


@pytest.fixture
async def cluster():
    c = SimCluster(small_lab().clusters[0], small_lab(), {})
    c.one_way_s = 0.0  # no WAN delay: this test times the cold start
    await c.start()
    yield c
    await c.stop()


async def get(c: SimCluster, host: str = "api.lab.example"):
    async with aiohttp.ClientSession() as s:
        t = time.monotonic()
        async with s.get(f"{c.endpoint}/x", headers={"Host": host}) as r:
            return r.status, r.headers, await r.read(), time.monotonic() - t


async def test_at_zero_the_ingress_holds_scales_up_and_answers_after_the_cold_start(cluster):
    dep = cluster.api.objects[("deployments", NAMESPACE, "api")]
    assert dep["status"]["readyReplicas"] == 0
    status, headers, body, took = await get(cluster)
    assert status == 200 and len(body) == int(headers["x-lab-bytes"]) and headers["x-lab-cluster"] == "east"
    assert 0.85 <= took < 2.0 and int(headers["x-lab-queued-ms"]) >= 850  # image pull + start
    dep = cluster.api.objects[("deployments", NAMESPACE, "api")]
    assert dep["spec"]["replicas"] == 1 and dep["status"]["readyReplicas"] == 1
    node = cluster.api.objects[("nodes", "", "east-node-1")]
    assert [["registry.lab/api:1"]] == [i["names"] for i in node["status"]["images"]]
    assert (await get(cluster, "nobody.example"))[0] == 404
    # idle for the grace: back to zero; the image stays cached, so the next start is the short one
    await wait_for(lambda: cluster.deployments["api"].desired == 0 and not cluster.deployments["api"].pods,
                   timeout_s=5, what="scale to zero")
    status, headers, _, took = await get(cluster)
    assert status == 200 and 0.25 <= took < 0.8
    cluster.scale_to_zero("api")
    cluster.evict_images()
    assert cluster.describe()["api"]["cached"] is False


async def test_a_scale_patch_through_the_api_starts_pods(cluster, tmp_path):
    cfg = cluster.api.kubeconfig(str(tmp_path))
    from kubernetes import client, config
    api = client.AppsV1Api(config.new_client_from_config(cfg))
    await asyncio.to_thread(api.patch_namespaced_deployment_scale, "api", NAMESPACE, {"spec": {"replicas": 2}})
    await wait_for(lambda: len(cluster.deployments["api"].pods) == 2, timeout_s=5, what="two pods")
    assert cluster.api.objects[("deployments", NAMESPACE, "api")]["status"]["readyReplicas"] == 2


async def test_control_api_injects_lists_and_reverts_faults(tmp_path):
    from chaos.lab.control import LabControl
    from chaos.lab.lab import Lab
    lab = Lab(small_lab(), str(tmp_path))
    await lab.start()
    events = []
    control = LabControl(lab, on_change=lambda ev, e: events.append((ev, e["label"])))
    port = await control.start()
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{base}/faults", json={"type": "blackhole", "cluster": "east"}) as r:
                assert r.status == 201
                fid = (await r.json())["id"]
            assert lab.clusters["east"].relay.blackhole
            async with s.get(f"{base}/faults") as r:
                assert [f["label"] for f in await r.json()] == ["blackhole@east"]
            async with s.post(f"{base}/faults", json={"type": "blackhole", "cluster": "mars"}) as r:
                assert r.status == 400 and "not in the lab" in (await r.json())["error"]
            async with s.post(f"{base}/faults", data=b"not json") as r:
                assert r.status == 400
            async with s.delete(f"{base}/faults/{fid}") as r:
                assert r.status == 200
            assert not lab.clusters["east"].relay.blackhole
            async with s.delete(f"{base}/faults/{fid}") as r:
                assert r.status == 404
        assert events == [("start", "blackhole@east"), ("end", "blackhole@east")]
    finally:
        await control.stop()
        await lab.stop()


async def test_slicer_and_slow_close(relay):
    from chaos.relay import Slicer, SlowClose
    relay.set_toxic("slicer", Slicer(average_size=100, size_variation=0, delay_s=0.01))
    data, took = await ask(relay.port, b"2000\n", 2000)
    assert len(data) == 2000 and took >= 0.15  # 20 slices, 10 ms apart
    relay.clear_toxic("slicer")
    relay.set_toxic("slow_close", SlowClose(0.4))
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    t = time.monotonic()
    writer.write_eof()  # the client closes its side: the source sees it 0.4 s later and closes too
    assert await asyncio.wait_for(reader.read(), 3) == b""
    assert time.monotonic() - t >= 0.4
    writer.close()
