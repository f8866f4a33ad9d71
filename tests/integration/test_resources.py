"""The router's own limits: client connections are capped so each has room for its upstream
connection; past the cap, and when the process is out of file descriptors anyway, requests get an
explicit 503 and no cluster is blamed; the open files limit is raised at start."""
import asyncio
import re

import aiohttp

from tests.conftest import cluster_docs, router_doc, router_process, split_doc, wait_for


async def _get(session, port):
    try:
        async with session.get(f"http://127.0.0.1:{port}/x") as r:
            if r.status == 503:
                assert r.headers["Connection"] == "close" and r.headers["Retry-After"] == "1"
            return r.status, await r.text()
    except aiohttp.ClientConnectionError:  # accepted and closed by the event loop while out of descriptors
        return "closed", ""


async def _admin(session, rp, path):
    async with session.get(f"http://127.0.0.1:{rp.admin_port}{path}") as r:
        return await (r.json() if path == "/debug/state" else r.text())


def _session():  # a connection per request, closed after it (idle keep-alive would hold the router's descriptors)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=15))


async def test_out_of_file_descriptors_is_a_503_not_a_cluster_failure(backends, tmp_path):
    a, b = await backends("a", "b")
    a.delay_s = b.delay_s = 1.0  # requests stay in flight, each holding two sockets
    (tmp_path / "c.yaml").write_text(cluster_docs({"a": a.port, "b": b.port}) + split_doc({"a": 1, "b": 1})
                                     + router_doc(limits={"maxConnections": 1000}))  # past the descriptors
    async with router_process(tmp_path, open_files=40) as rp, _session() as s:
        results = await asyncio.gather(*[_get(s, rp.port) for _ in range(60)])
        assert {status for status, _ in results} <= {200, 503, "closed"}, results
        refused = [text for status, text in results if status == 503]
        assert refused and all(t == "router out of local resources (EMFILE)\n" for t in refused), results

        async def admin_answers():  # once the refused connections are closed, descriptors are free again
            try:
                return await _admin(s, rp, "/debug/state")
            except aiohttp.ClientConnectionError:
                return None
        state = await wait_for(admin_answers, timeout_s=10, interval_s=0.2, what="the admin server answering")
        assert state["open_files_limit"] == 40
        assert all(c["health"]["healthy"] and not c["health"]["ejections"] for c in state["clusters"].values()), \
            state["clusters"]
        metrics = await _admin(s, rp, "/metrics")
        assert "router_upstream_connect_failures_total{" not in metrics  # no cluster blamed, none retried
        assert 'router_retries_total{reason="connect"}' not in metrics
        rejected = re.search(r'router_rejected_requests_total\{code="503",reason="local resources exhausted"\} '
                             r'([\d.e+]+)', metrics)
        assert rejected and float(rejected.group(1)) == len(refused), metrics
        a.delay_s = b.delay_s = 0.0
        assert (await _get(s, rp.port))[0] == 200


async def test_connections_past_the_limit_get_503_at_once(backends, tmp_path):
    (a,) = await backends("a")
    a.delay_s = 1.0
    (tmp_path / "c.yaml").write_text(cluster_docs({"a": a.port}) + split_doc({"a": 1})
                                     + router_doc(limits={"maxConnections": 3}))
    async with router_process(tmp_path) as rp, _session() as s:
        results = await asyncio.gather(*[_get(s, rp.port) for _ in range(8)])
        assert sorted(status for status, _ in results) == [200] * 3 + [503] * 5, results
        assert {text for status, text in results if status == 503} == {"too many connections\n"}
        assert len(a.seen) == 3
        assert (await _admin(s, rp, "/debug/state"))["max_connections"] == 3
        a.delay_s = 0.0
        assert (await _get(s, rp.port))[0] == 200  # the count falls as connections close


async def test_connection_limit_leaves_room_within_the_open_files_limit(backends, tmp_path):
    (a,) = await backends("a")
    (tmp_path / "c.yaml").write_text(cluster_docs({"a": a.port}) + split_doc({"a": 1}))
    async with router_process(tmp_path, open_files=1000) as rp, _session() as s:
        state = await _admin(s, rp, "/debug/state")
    assert state["open_files_limit"] == 1000 and state["max_connections"] == (1000 - 64) // 2


async def test_open_files_limit_is_raised_to_the_hard_limit(backends, tmp_path):
    import resource
    (a,) = await backends("a")
    (tmp_path / "c.yaml").write_text(cluster_docs({"a": a.port}) + split_doc({"a": 1}))
    async with router_process(tmp_path) as rp, _session() as s:
        state = await _admin(s, rp, "/debug/state")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    assert state["open_files_limit"] == max(soft, wanted)
