"""Access log: a JSON line per answered request (proxied, refused by the router, or malformed), written
off the event loop; lines beyond what the writer can take are dropped and counted, never waited for."""
import asyncio
import json

from router.obs.accesslog import AccessLog
from tests.conftest import cluster_docs, raw_request, router_doc, split_doc, wait_for


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_each_answer_is_one_json_line(backends, router, tmp_path):
    (a,) = await backends("a")
    log_path = tmp_path / "access.log"
    app = await router(cluster_docs({"a": a.port}) + split_doc({"a": 1}, hosts=["shop.example"])
                       + router_doc(accessLog={"path": str(log_path)}))
    await raw_request(app.port, b"GET /p?q=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
    await raw_request(app.port, b"POST /x HTTP/1.1\r\nHost: other.example\r\nContent-Length: 3\r\n"
                                b"Connection: close\r\n\r\nabc")
    await raw_request(app.port, b"GET /bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    lines = await wait_for(lambda: len(_lines(log_path)) == 3 and _lines(log_path), what="three log lines")
    ok, no_route, refused = lines
    assert {k: ok[k] for k in ("client", "method", "host", "path", "status", "cluster", "route", "reason")} == {
        "client": "127.0.0.1", "method": "GET", "host": "shop.example", "path": "/p?q=1", "status": 200,
        "cluster": "a", "route": "split", "reason": "weighted"}
    assert ok["time"].endswith("Z") and 0 <= ok["duration_ms"] < 5000 and ok["request_id"] == ""
    assert (ok["tries"], no_route["tries"], refused["tries"]) == (1, 0, 0)  # times sent to a cluster
    # body bytes each way (the cluster's "a:0", the router's own text), and the cluster's time to its head
    assert (ok["bytes_received"], ok["bytes_sent"]) == (0, 3) and 0 < ok["upstream_ms"] <= ok["duration_ms"]
    assert no_route["bytes_sent"] == len("no route for host 'other.example'\n") and no_route["upstream_ms"] is None
    assert refused["upstream_ms"] is None
    assert ok["protocol"] == no_route["protocol"] == refused["protocol"] == "HTTP/1.1"
    assert (no_route["method"], no_route["status"], no_route["cluster"], no_route["route"]) == ("POST", 404, "-", "-")
    assert no_route["reason"] == "no route for host 'other.example'"
    assert (refused["status"], refused["path"], refused["reason"]) == (400, "/bad", "more than one Host header")
    assert app.metrics.access_log_dropped._value.get() == 0


async def test_a_retried_request_logs_its_tries(backends, router, tmp_path):
    a, b = await backends("a", "b")
    a.status = 503
    log_path = tmp_path / "access.log"
    app = await router(cluster_docs({"a": a.port, "b": b.port}) + split_doc({"a": 1, "b": 0.0001})
                       + "  retry: {codes: [503]}\n" + router_doc(accessLog={"path": str(log_path)}))
    raw = b""
    while not a.seen:  # until the first try lands on a (its weight makes that nearly every time)
        raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and b"x-router-cluster: b" in raw
    lines = await wait_for(lambda: len(_lines(log_path)) == len(b.seen) and _lines(log_path), what="log lines")
    assert (lines[-1]["cluster"], lines[-1]["tries"], lines[-1]["reason"]) == ("b", 2, "failover")


async def test_request_id_is_logged_as_sent_and_returned(backends, router, tmp_path):
    (a,) = await backends("a")
    log_path = tmp_path / "access.log"
    app = await router(cluster_docs({"a": a.port}) + split_doc({"a": 1})
                       + router_doc(accessLog={"path": str(log_path)}, requestId=True))
    raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    (line,) = await wait_for(lambda: _lines(log_path), what="a log line")
    assert len(line["request_id"]) == 32 and a.seen[-1].headers["X-Request-Id"] == line["request_id"]
    assert f"X-Request-Id: {line['request_id']}".encode() in raw


async def test_lines_past_the_pending_limit_are_dropped_and_counted(tmp_path):
    dropped = []
    log = AccessLog(asyncio.get_running_loop(), str(tmp_path / "a.log"), dropped.append, max_pending=2)
    for i in range(5):  # all before the first flush
        log.log((0.0, "10.0.0.1", b"GET", "h", b"/%d" % i, 200, "a", "web", 0.001, "weighted", b"", 1, 0, 2, 0.0005,
                 "1.1"))
    await log.close()
    assert [r["path"] for r in _lines(tmp_path / "a.log")] == ["/0", "/1"] and dropped == [1, 1, 1]
