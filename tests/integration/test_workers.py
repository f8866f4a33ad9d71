"""`serve --workers 2`: one port shared by two processes, metrics merged, reload fanned out."""
import asyncio
import functools
import os
import re
import signal
import subprocess

import aiohttp

from tests.conftest import (cluster_docs, keepalive_text, read_response, router_doc, router_process, split_doc,
                            wait_for)
from tests.integration.test_rate_limit import get


async def debug_state(s: aiohttp.ClientSession, rp) -> dict:
    """The supervisor's /debug/state."""
    async with s.get(f"http://127.0.0.1:{rp.admin_port}/debug/state") as r:
        return await r.json()


def ready_at(s: aiohttp.ClientSession, rp):
    """A condition for wait_for: every worker of the supervisor `rp` is ready."""
    async def ready():
        return (await debug_state(s, rp))["ready"]
    return ready


async def test_two_workers_share_the_port_and_merge_metrics(backends, tmp_path):
    a, b = await backends("a", "b")
    clusters = cluster_docs({"a": a.port, "b": b.port})
    (tmp_path / "c.yaml").write_text(clusters + split_doc({"a": 1, "b": 0}))
    async with router_process(tmp_path, "--workers", "2", env={"EDGE_ROUTER_ADMIN_TOKEN": "t"}) as rp:
        async with aiohttp.ClientSession() as s:
            async def ready():
                async with s.get(f"http://127.0.0.1:{rp.admin_port}/readyz") as r:
                    return r.status == 200
            await wait_for(ready, timeout_s=10, interval_s=0.05, what="workers ready")
            results = await asyncio.gather(*[keepalive_text(rp.port, 25) for _ in range(40)])
            assert all(c == "a" for r in results for c in r)
            async def counted():  # workers fold their counts into the shared series every second
                async with s.get(f"http://127.0.0.1:{rp.admin_port}/metrics") as r:
                    text = await r.text()
                found = re.findall(r'router_requests_total\{cluster="a",code="200",route="split"\} ([\d.e+]+)', text)
                return sum(float(v) for v in found) == 1000
            await wait_for(counted, timeout_s=5, interval_s=0.2, what="1000 requests in the merged metrics")
            # Both workers took connections: each worker's series carries its pid before merging.
            mp_dir, workers = _mp_dir(rp.pid)
            pids = set(re.findall(r"_(\d+)\.db", " ".join(os.listdir(mp_dir))))
            assert set(workers) <= pids, (workers, pids)  # both workers wrote series that were merged

            (tmp_path / "c.yaml").write_text(clusters + split_doc({"a": 0, "b": 1}))
            async with s.post(f"http://127.0.0.1:{rp.admin_port}/admin/reload", headers={"Authorization": "Bearer t"}) as r:
                assert r.status == 200

            async def moved():
                got = await asyncio.gather(*[keepalive_text(rp.port, 5) for _ in range(8)])
                return all(c == "b" for r in got for c in r)
            await wait_for(moved, timeout_s=5, interval_s=0.05, what="every worker reloaded")
        rp.send_signal(signal.SIGTERM)
        assert await rp.wait(30) == 0


def _mp_dir(pid: int) -> tuple[str, list[str]]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2, children
    env = open(f"/proc/{children[0]}/environ", "rb").read().split(b"\0")
    for item in env:
        if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return item.split(b"=", 1)[1].decode(), children
    raise AssertionError("supervisor has no metrics dir")


async def test_worker_that_cannot_start_is_retried_with_growing_pauses(backends, tmp_path):
    (a,) = await backends("a")
    good = cluster_docs({"a": a.port}) + split_doc({"a": 1})
    (tmp_path / "c.yaml").write_text(good)
    async with router_process(tmp_path, "--workers", "2") as rp:
        async with aiohttp.ClientSession() as s:
            state = functools.partial(debug_state, s, rp)
            await wait_for(ready_at(s, rp), timeout_s=10, interval_s=0.05, what="workers ready")
            (tmp_path / "c.yaml").write_text("kind: [broken")  # a new worker cannot start with this
            worker = subprocess.run(["pgrep", "-P", str(rp.pid)], capture_output=True, text=True).stdout.split()[0]
            os.kill(int(worker), signal.SIGKILL)

            async def backing_off():  # three quick failures in a row: 0.5, 1, 2 s
                return (await state())["restart_pause_s"] >= 2.0
            await wait_for(backing_off, timeout_s=15, interval_s=0.1, what="restart pause grown to 2 s")
            async with s.get(f"http://127.0.0.1:{rp.admin_port}/metrics") as r:
                text = await r.text()
                restarts = re.search(r"^router_worker_restarts_total ([\d.]+)", text, re.M)
            assert restarts and float(restarts.group(1)) >= 3
            # The supervisor's own series are merged too: it refused the broken file once.
            assert 'router_config_reloads_total{result="error"} 1.0' in text
            (tmp_path / "c.yaml").write_text(good)  # fixed: the next try starts and serves
            await wait_for(ready_at(s, rp), timeout_s=15, interval_s=0.1, what="worker back")
            assert await keepalive_text(rp.port, 1) == ["a"]
        rp.send_signal(signal.SIGTERM)
        assert await rp.wait(30) == 0


async def test_debug_endpoints_answer_from_the_workers_own_state(backends, tmp_path):
    (a,) = await backends("a")
    (tmp_path / "c.yaml").write_text(cluster_docs({"a": a.port, "down": 1}) + split_doc({"a": 1, "down": 1}))
    async with router_process(tmp_path, "--workers", "2") as rp:
        async with aiohttp.ClientSession() as s:
            async def get(endpoint, **params):
                async with s.get(f"http://127.0.0.1:{rp.admin_port}{endpoint}", params=params) as r:
                    return r.status, await r.json()

            await wait_for(ready_at(s, rp), timeout_s=10, interval_s=0.05, what="workers ready")
            status, state = await get("/debug/state")
            pids = [str(pid) for pid in state["workers"]]
            assert status == 200 and sorted(state["worker_state"]) == sorted(pids) and len(pids) == 2
            for pid in pids:  # each worker's own view: its health, in flight, expected latency inputs
                assert state["worker_state"][pid]["routes"][0]["clusters"]["down"]["healthy"] is True

            async def down_seen():  # a worker marks `down` at its first refused connect (and retries on a)
                await asyncio.gather(*[keepalive_text(rp.port, 2) for _ in range(6)])
                views = (await get("/debug/state"))[1]["worker_state"]
                return [pid for pid in pids if not views[pid]["routes"][0]["clusters"]["down"]["healthy"]]
            marked = await wait_for(down_seen, timeout_s=10, interval_s=0.05, what="a worker saw `down` refuse")
            sent = len(a.seen)
            status, out = await get("/debug/route", host="h", path="/", worker=marked[0])
            assert status == 200 and out["worker"] == int(marked[0]) and out["route"] == "split"
            assert out["answer"]["cluster"] == "a" and out["clusters"]["down"]["healthy"] is False
            for pid in pids:
                assert (await get("/debug/route", host="h", path="/", worker=pid))[1]["worker"] == int(pid)
            status, out = await get("/debug/route", host="h", path="/")  # the lowest ready pid by default
            assert status == 200 and out["worker"] == min(int(p) for p in pids)
            status, out = await get("/debug/route", path="/")  # the worker's 400, passed on
            assert status == 400 and "host=" in out["error"]
            status, out = await get("/debug/route", host="h", path="/", worker="1")
            assert status == 400 and "not one of the workers" in out["error"]
            assert len(a.seen) == sent  # asking sent nothing
            mp_dir, _ = _mp_dir(rp.pid)
            assert len([f for f in os.listdir(mp_dir) if f.endswith(".sock")]) == 2
        rp.send_signal(signal.SIGTERM)
        assert await rp.wait(30) == 0
    assert not os.path.exists(mp_dir)  # the workers' sockets went with the supervisor's directory


async def test_workers_count_a_rate_limit_in_one_table(backends, tmp_path):
    """A route's rate limit is its total over the workers (one table in shared memory), and a worker that
    replaces one that died finds the buckets where they were."""
    (a,) = await backends("a")
    split = split_doc({"a": 1}, "limited", ["limited"]) + "  rateLimit: {requestsPerSecond: 0.001, burst: 10}\n"
    (tmp_path / "c.yaml").write_text(cluster_docs({"a": a.port}) + split)
    async with router_process(tmp_path, "--workers", "2") as rp:
        async with aiohttp.ClientSession() as s:
            state = functools.partial(debug_state, s, rp)
            await wait_for(ready_at(s, rp), timeout_s=10, interval_s=0.05, what="workers ready")
            # 40 connections of one request each: SO_REUSEPORT spreads them over both workers.
            got = await asyncio.gather(*[get(rp.port, "limited") for _ in range(40)])
            statuses = sorted(status for status, _, _ in got)
            assert statuses == [200] * 10 + [429] * 30  # the burst once, not once per worker
            assert len(a.seen) == 10
            views = (await state())["worker_state"]
            assert len(views) == 2
            for view in views.values():
                limit = view["routes"][0]["rate_limit"]
                assert limit["shared"] is True and limit["buckets"] == 1

            worker = subprocess.run(["pgrep", "-P", str(rp.pid)], capture_output=True, text=True).stdout.split()[0]
            os.kill(int(worker), signal.SIGKILL)

            async def replaced():
                return (await state())["ready"] and str(worker) not in (await state())["worker_state"]
            await wait_for(replaced, timeout_s=15, interval_s=0.1, what="the killed worker replaced")
            got = await asyncio.gather(*[get(rp.port, "limited") for _ in range(20)])
            assert [status for status, _, _ in got] == [429] * 20  # the bucket is still empty
            assert len(a.seen) == 10
        rp.send_signal(signal.SIGTERM)
        assert await rp.wait(30) == 0


async def test_workers_hold_a_client_to_its_connection_limit_together(backends, tmp_path):
    """limits.maxConnectionsPerClient counts an address's connections at every worker; a worker that dies
    gives its places back."""
    (a,) = await backends("a")
    (tmp_path / "c.yaml").write_text(cluster_docs({"a": a.port}) + split_doc({"a": 1})
                                     + router_doc(limits={"maxConnectionsPerClient": 3}))
    async with router_process(tmp_path, "--workers", "2") as rp:
        async with aiohttp.ClientSession() as s:
            state = functools.partial(debug_state, s, rp)
            await wait_for(ready_at(s, rp), timeout_s=10, interval_s=0.05, what="workers ready")

            async def connect_many(n: int) -> list:
                """n connections, one request each: those answered 200 are kept open."""
                held = []
                for _ in range(n):
                    reader, writer = await asyncio.open_connection("127.0.0.1", rp.port)
                    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                    status = (await asyncio.wait_for(read_response(reader), 5))[0]
                    assert status in (200, 503), status
                    if status == 200:
                        held.append(writer)
                    else:
                        writer.close()
                return held

            held = await connect_many(10)  # SO_REUSEPORT spreads them over both workers
            assert len(held) == 3  # the limit over both workers, not per worker

            async def per_worker():
                views = (await state())["worker_state"]
                counts = {int(pid): view["open_connections"] for pid, view in views.items()}
                return counts if sum(counts.values()) == 3 else None
            counts = await wait_for(per_worker, timeout_s=5, interval_s=0.05, what="the refused ones closed")
            victim = max(counts, key=counts.get)  # holds two or three of them
            good = (tmp_path / "c.yaml").read_text()
            (tmp_path / "c.yaml").write_text("kind: [broken")  # its replacement cannot start for now
            os.kill(victim, signal.SIGKILL)

            async def survivor_alone():
                view = await state()
                return str(victim) not in view["worker_state"] and view["restart_pause_s"] > 0
            await wait_for(survivor_alone, timeout_s=15, interval_s=0.05, what="the killed worker gone")
            more = await connect_many(10)  # all to the survivor
            assert len(more) == counts[victim]  # the dead worker's places were given back, the survivor's held
            (tmp_path / "c.yaml").write_text(good)
            for writer in held + more:
                writer.close()
        rp.send_signal(signal.SIGTERM)
        assert await rp.wait(30) == 0


async def test_workers_hold_a_cluster_to_its_request_limit_together(backends, tmp_path):
    """Cluster maxRequests counts the requests in flight at every worker: past it, the choice overflows."""
    a, b = await backends("a", "b")
    a.delay_s = 3  # a's answers take long: its requests stay in flight
    clusters = cluster_docs({"a": a.port, "b": b.port}).replace(
        f"endpoint: http://127.0.0.1:{a.port}\n", f"endpoint: http://127.0.0.1:{a.port}\n  maxRequests: 2\n")
    (tmp_path / "c.yaml").write_text(clusters + split_doc({"a": 1000, "b": 1}))
    async with router_process(tmp_path, "--workers", "2") as rp:
        async with aiohttp.ClientSession() as s:
            state = functools.partial(debug_state, s, rp)
            await wait_for(ready_at(s, rp), timeout_s=10, interval_s=0.05, what="workers ready")
            tasks = []
            for i in range(8):  # one at a time, each on its own connection (spread over both workers)
                tasks.append(asyncio.create_task(get(rp.port, "h")))
                await wait_for(lambda: len(a.seen) + len(b.seen) == i + 1, what=f"request {i} at a cluster")
            assert len(a.seen) == 2 and len(b.seen) == 6  # the limit over both workers, not 2 per worker
            views = (await state())["worker_state"].values()
            assert sorted(v["clusters"]["a"]["inflight"] + v["clusters"]["a"]["inflight_other_workers"]
                          for v in views) == [2, 2]
            answers = await asyncio.gather(*tasks)
            assert sorted(h["x-router-cluster"] for _, h, _ in answers) == ["a"] * 2 + ["b"] * 6
            async def given_back():  # as the requests ended, each worker published its count again
                return all(v["clusters"]["a"]["inflight"] + v["clusters"]["a"]["inflight_other_workers"] == 0
                           for v in (await state())["worker_state"].values())
            await wait_for(given_back, timeout_s=5, interval_s=0.05, what="a's places given back at every worker")
            a.delay_s = 0  # a takes requests again
            later = [(await get(rp.port, "h"))[1]["x-router-cluster"] for _ in range(6)]
            assert later.count("a") >= 5, later
        rp.send_signal(signal.SIGTERM)
        assert await rp.wait(30) == 0


async def test_a_cluster_one_worker_ejects_is_out_at_every_worker(backends, tmp_path):
    a, b = await backends("a", "b")
    a.status = 500
    (tmp_path / "c.yaml").write_text(cluster_docs({"a": a.port, "b": b.port}) + split_doc({"a": 1000, "b": 1}))
    async with router_process(tmp_path, "--workers", "2") as rp:
        async with aiohttp.ClientSession() as s:
            await wait_for(ready_at(s, rp), timeout_s=10, interval_s=0.05, what="workers ready")

            async def ejected() -> dict:
                views = (await debug_state(s, rp))["worker_state"]
                return {pid: v["clusters"]["a"]["health"] for pid, v in views.items()
                        if v["clusters"]["a"]["health"]["ejected"]}
            for _ in range(20):  # one request a connection until a worker has seen 5 in a row fail
                await get(rp.port, "h")
                if await ejected():
                    break
            both = await wait_for(lambda: ejected_by_both(ejected), timeout_s=3, what="a out at both workers")
            reasons = sorted(h["last_reason"] for h in both.values())  # the other worker saw fewer than 5 of them
            assert reasons == ["5 consecutive 5xx", "ejected by another worker"], reasons
            assert all(h["x-router-cluster"] == "b" for _, h, _ in [await get(rp.port, "h") for _ in range(10)])
        rp.send_signal(signal.SIGTERM)
        assert await rp.wait(30) == 0


async def ejected_by_both(ejected) -> dict | None:
    found = await ejected()
    return found if len(found) == 2 else None


async def test_workers_take_turns_probing_a_cluster(backends, tmp_path):
    """One probe an interval for the router, not one per worker, and both workers apply every result."""
    (a,) = await backends("a")
    (tmp_path / "c.yaml").write_text(router_doc(probes={"interval": "100ms"}) + cluster_docs({"a": a.port})
                                     + split_doc({"a": 1}))
    async with router_process(tmp_path, "--workers", "2") as rp:
        async with aiohttp.ClientSession() as s:
            await wait_for(ready_at(s, rp), timeout_s=10, interval_s=0.05, what="workers ready")

            async def one_probe_at_both() -> dict | None:  # the same probe (its start) is each worker's last
                views = (await debug_state(s, rp))["worker_state"]
                last = {int(pid): v["clusters"]["a"]["last_probe"] for pid, v in views.items()}
                at = {p["at"] for p in last.values() if p}
                return last if len(last) == 2 and all(last.values()) and len(at) == 1 else None
            last = await wait_for(one_probe_at_both, timeout_s=10, interval_s=0.02, what="a shared probe result")
            (taker, prober), = [(pid, p["by_worker"]) for pid, p in last.items() if "by_worker" in p]
            assert {taker, prober} == set(last), last  # one worker probed, the other took its result
            loop = asyncio.get_running_loop()
            start, counted = loop.time(), a.probes
            await asyncio.sleep(2)  # a window to count the probes sent in
            sent, window = a.probes - counted, loop.time() - start
            assert sent <= 1.5 * window / 0.1, (sent, window)  # one worker's rate (each alone: twice that)
            assert sent >= 0.5 * window / 0.1, (sent, window)
        rp.send_signal(signal.SIGTERM)
        assert await rp.wait(30) == 0


async def test_workers_hold_a_service_to_its_buffer_bound_together(tmp_path):
    """buffer.perService 3 over two workers: three requests held in all, wherever they landed; every later
    one answered 503 at once, at either worker; nothing lost when the copy is ready."""
    from tests.conftest import raw_request
    from tests.integration.test_hold import ZeroScaledCluster, service_config
    cluster = await ZeroScaledCluster(cold_start_s=60).start()
    (tmp_path / "c.yaml").write_text(service_config(cluster.port, hold="20s", buffer={"perService": 3}))
    held = []
    try:
        async with router_process(tmp_path, "--workers", "2") as rp:
            async with aiohttp.ClientSession() as s:
                await wait_for(ready_at(s, rp), timeout_s=10, interval_s=0.05, what="workers ready")

                async def held_by_worker() -> dict:
                    views = (await debug_state(s, rp))["worker_state"]
                    return {pid: v["held"].get("svc", 0) for pid, v in views.items()}
                request = b"GET /h HTTP/1.1\r\nHost: svc.example.com\r\nConnection: close\r\n\r\n"
                for n in range(1, 4):  # one at a time: each held before the next is sent
                    held.append(asyncio.create_task(raw_request(rp.port, request, timeout_s=30)))
                    await wait_for(lambda: _sum_is(held_by_worker(), n), timeout_s=5, what=f"{n} held")
                by_worker = await held_by_worker()
                refused = await asyncio.gather(*[raw_request(rp.port, request, timeout_s=5) for _ in range(10)])
                assert all(r.startswith(b"HTTP/1.1 503") and b"too many requests waiting" in r for r in refused), \
                    [r[:60] for r in refused]
                # Three held over two workers leave one holding at most one: of ten connections the kernel spreads
                # over both, some reached it, and it refused them too.
                assert await held_by_worker() == by_worker
                cluster.ready = True  # the copy is up: the held three are served
                answers = await asyncio.gather(*held)
                assert all(a.startswith(b"HTTP/1.1 200") for a in answers) and cluster.served.count("/h") == 3
            rp.send_signal(signal.SIGTERM)
            assert await rp.wait(30) == 0
    finally:
        for task in held:
            task.cancel()
        await cluster.stop()


async def _sum_is(counts, n: int) -> bool:
    return sum((await counts).values()) == n


async def test_workers_share_a_woken_copys_capacity_in_the_first_wave(tmp_path):
    """containerConcurrency 4, twelve requests held over two workers: the first wave onto the new copy is
    about 4 in all (each worker releasing into its share, as Knative's activators do), not 4 per worker."""
    from tests.conftest import raw_request
    from tests.integration.test_hold import ZeroScaledCluster, service_config
    cluster = await ZeroScaledCluster(cold_start_s=0.3, handler_s=0.5).start()
    config = service_config(cluster.port, hold="20s").replace("containerConcurrency: 10", "containerConcurrency: 4")
    (tmp_path / "c.yaml").write_text(config)
    try:
        async with router_process(tmp_path, "--workers", "2") as rp:
            async with aiohttp.ClientSession() as s:
                await wait_for(ready_at(s, rp), timeout_s=10, interval_s=0.05, what="workers ready")
                request = b"GET /w HTTP/1.1\r\nHost: svc.example.com\r\nConnection: close\r\n\r\n"
                answers = await asyncio.gather(*[raw_request(rp.port, request, timeout_s=20) for _ in range(12)])
                views = (await debug_state(s, rp))["worker_state"].values()
                assert [v["released_in_flight"] for v in views] == [{}, {}]  # every release counted back
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers), [a[:40] for a in answers]
        first = min(cluster.arrivals)
        first_wave = sum(1 for t in cluster.arrivals if t < first + cluster.handler_s * 0.8)
        assert first_wave <= 4, sorted(round(t - first, 3) for t in cluster.arrivals)
    finally:
        await cluster.stop()
