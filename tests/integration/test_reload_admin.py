"""Reload (admin, file change, SIGHUP), admin endpoints and tokens, drain on SIGTERM."""
import asyncio
import json
import signal

import aiohttp
import pytest

from router.obs.admin import AdminError
from tests.conftest import (cluster_docs, keepalive_text, raw_request, readiness_failed, router_doc, router_process,
                            split_doc, wait_for)

TOKEN = "s3cret-token"


async def admin(app, method, path, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        async with s.request(method, f"http://127.0.0.1:{app.admin_port}{path}", headers=headers) as r:
            return r.status, await r.text()


@pytest.fixture
def token_env(monkeypatch):
    monkeypatch.setenv("EDGE_ROUTER_ADMIN_TOKEN", TOKEN)


async def test_admin_reload_swaps_good_config_and_refuses_bad(backends, router, token_env):
    a, b = await backends("a", "b")
    clusters = cluster_docs({"a": a.port, "b": b.port})
    app = await router(clusters + split_doc({"a": 1, "b": 0}))
    assert {h for h in await keepalive_text(app.port, 20)} == {"a"}
    cfg = app.config_dir / "router.yaml"

    cfg.write_text(clusters + split_doc({"a": 0, "b": 1}))
    status, body = await admin(app, "POST", "/admin/reload")
    assert status == 200 and '"ok": true' in body
    assert {h for h in await keepalive_text(app.port, 20)} == {"b"}

    cfg.write_text(clusters + split_doc({"a": 0, "b": -5}))
    status, body = await admin(app, "POST", "/admin/reload")
    assert status == 400 and f"{cfg}:" in body and "weight must not be negative" in body
    assert {h for h in await keepalive_text(app.port, 20)} == {"b"}, "the last good config keeps serving"
    _, metrics = await admin(app, "GET", "/metrics", token=None)
    assert 'router_config_reloads_total{result="error"} 1.0' in metrics
    assert 'router_config_reloads_total{result="success"} 1.0' in metrics
    _, state = await admin(app, "GET", "/debug/state", token=None)
    assert "weight must not be negative" in state


async def test_reload_names_the_changes_that_wait_for_the_next_start(backends, router, token_env, caplog):
    (a,) = await backends("a")
    base = cluster_docs({"a": a.port}) + split_doc({"a": 1})
    app = await router(base + router_doc(timeouts={"connect": "2s"}))
    cfg = app.config_dir / "router.yaml"
    cfg.write_text(base + router_doc(timeouts={"connect": "1s"}, listen="127.0.0.1:1", rttDecay="5s",
                                     buffer={"perService": 5}, httpsRedirect={"listen": "127.0.0.1:0"}))
    status, body = await admin(app, "POST", "/admin/reload")
    later = ["Router spec.rttDecay", "Router spec.buffer", "Router spec.httpsRedirect"]
    assert status == 200 and json.loads(body)["next_start"] == later
    # listen was set by a flag, so the file's value would not apply after a restart either
    assert any("take effect at the next start: " + ", ".join(later) in r.message for r in caplog.records)
    assert app.ctx.settings.timeouts.connect_s == 1.0  # the rest applied at once
    assert app.redirect_server is None
    state = json.loads((await admin(app, "GET", "/debug/state", token=None))[1])
    assert state["next_start"] == later
    cfg.write_text(base + router_doc(timeouts={"connect": "1s"}))
    status, body = await admin(app, "POST", "/admin/reload")
    assert status == 200 and "next_start" not in json.loads(body)  # back to what it started with


async def test_file_change_reloads_without_failing_requests(backends, router):
    a, b = await backends("a", "b")
    clusters = cluster_docs({"a": a.port, "b": b.port})
    app = await router(clusters + split_doc({"a": 1, "b": 0}), watch_interval_s=0.05)
    cfg = app.config_dir / "router.yaml"
    stop = asyncio.Event()
    seen: list[tuple[int, str]] = []

    async def load():
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        from tests.conftest import read_response
        while not stop.is_set():
            writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            status, headers, _ = await read_response(reader)
            seen.append((status, headers.get("x-router-cluster")))
        writer.close()

    tasks = [asyncio.create_task(load()) for _ in range(4)]
    for i in range(6):
        weights = {"a": 0, "b": 1} if i % 2 == 0 else {"a": 1, "b": 0}
        cfg.write_text(clusters + split_doc(weights) + f"# {i}\n")
        want = app.version + 1
        await wait_for(lambda: app.version >= want, timeout_s=5, what="reload")
    stop.set()
    await asyncio.gather(*tasks)
    assert seen and all(s == 200 for s, _ in seen)
    assert {c for _, c in seen} == {"a", "b"}


async def test_admin_actions_need_the_bearer_token(backends, router, token_env):
    (a,) = await backends("a")
    app = await router(cluster_docs({"a": a.port}) + split_doc({"a": 1}))
    assert (await admin(app, "POST", "/admin/reload", token=None))[0] == 401
    assert (await admin(app, "POST", "/admin/reload", token="wrong"))[0] == 401
    for raw in (b"Bearer \xff\xfe", "Bearer s3cret-tokén".encode(), b"Basic eDp5"):  # not UTF-8, not ASCII, not Bearer
        answer = await raw_request(app.admin_port, b"POST /admin/reload HTTP/1.1\r\nHost: a\r\nAuthorization: " + raw
                                   + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 401"), (raw, answer[:200])
    assert (await admin(app, "GET", "/readyz", token=None))[0] == 200
    assert (await admin(app, "POST", "/admin/drain"))[0] == 200
    status, _ = await admin(app, "GET", "/readyz", token=None)
    assert status == 503
    _, state = await admin(app, "GET", "/debug/state", token=None)
    assert '"configured_weight": 1.0' in state and '"effective_percent": 100.0' in state


async def test_admin_refuses_public_bind_without_token(backends, router):
    (a,) = await backends("a")
    with pytest.raises(AdminError, match="without a token"):
        await router(cluster_docs({"a": a.port}) + split_doc({"a": 1}) + router_doc(admin="0.0.0.0:0"),
                     admin_override="0.0.0.0:0")


async def test_sigterm_drains_in_flight_requests_then_exits_zero(backends, tmp_path):
    (a,) = await backends("a")
    a.delay_s = 1.0
    (tmp_path / "c.yaml").write_text(cluster_docs({"a": a.port}) + split_doc({"a": 1}))
    async with router_process(tmp_path, env={"EDGE_ROUTER_ADMIN_TOKEN": TOKEN}) as rp:
        async with aiohttp.ClientSession() as s:
            slow = [asyncio.create_task(s.get(f"http://127.0.0.1:{rp.port}/slow")) for _ in range(3)]
            await wait_for(lambda: len(a.seen) == 3, timeout_s=5, what="requests upstream")
            rp.send_signal(signal.SIGTERM)
            await wait_for(lambda: readiness_failed(s, rp.admin_port), timeout_s=2, what="readiness to fail")
            for t in slow:
                r = await t
                assert r.status == 200 and await r.text() == "a:0"
        assert await rp.wait() == 0


async def test_sighup_reloads(backends, tmp_path):
    a, b = await backends("a", "b")
    clusters = cluster_docs({"a": a.port, "b": b.port})
    (tmp_path / "c.yaml").write_text(clusters + split_doc({"a": 1, "b": 0}))
    async with router_process(tmp_path) as rp:
        assert set(await keepalive_text(rp.port, 5)) == {"a"}
        (tmp_path / "c.yaml").write_text(clusters + split_doc({"a": 0, "b": 1}))
        rp.send_signal(signal.SIGHUP)

        async def moved():
            return set(await keepalive_text(rp.port, 5)) == {"b"}
        await wait_for(moved, timeout_s=5, interval_s=0.1, what="SIGHUP reload")


async def test_metrics_count_requests_by_cluster_code_and_route(backends, router):
    (a,) = await backends("a")
    a.status = 503
    app = await router(cluster_docs({"a": a.port}) + split_doc({"a": 1}, hosts=["h"]) +
                       split_doc({"a": 1}, name="other", hosts=["o"]))
    await keepalive_text_any(app.port, 3)
    await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n")
    await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: nowhere\r\nConnection: close\r\n\r\n")
    _, text = await admin(app, "GET", "/metrics", token=None)
    assert 'router_requests_total{cluster="a",code="503",route="other"} 1.0' in text
    assert 'router_requests_total{cluster="-",code="404",route="-"} 1.0' in text  # no route for its host
    assert 'router_requests_total{cluster="a",code="503",route="split"} 3.0' in text
    assert 'router_request_duration_seconds_count{cluster="a",route="split"} 3.0' in text
    assert 'router_request_duration_seconds_bucket{cluster="a",le="+Inf",route="split"} 3.0' in text
    _, again = await admin(app, "GET", "/metrics", token=None)
    assert 'router_requests_total{cluster="a",code="503",route="split"} 3.0' in again  # a scrape does not double count


async def keepalive_text_any(port, n):
    from tests.conftest import read_response
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        await read_response(reader)
    writer.close()
