"""GET /debug/route on the admin port: the route a request would take, what of it answers first, and a
choice drawn now; asking sends nothing and changes nothing."""
import aiohttp

from tests.conftest import cluster_docs, httproute_doc, split_doc


async def explain(app, **query) -> tuple[int, dict]:
    params = [(k, v) for k, vs in query.items() for v in (vs if isinstance(vs, list) else [vs])]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{app.admin_port}/debug/route", params=params) as r:
            return r.status, await r.json()


async def test_the_route_a_request_would_take_and_the_cluster_drawn(backends, router):
    a, b = await backends("a", "b")
    rules = """\
        - matches: [{path: {value: /cart}, headers: [{name: X-Canary, value: "1"}]}]
          backendRefs: [{name: b}]
        - matches: [{path: {value: /cart}}]
          backendRefs: [{name: a, weight: 1}, {name: b, weight: 0}]
        """
    app = await router(cluster_docs({"a": a.port, "b": b.port}) + httproute_doc(rules, ["shop"])
                       + split_doc({"a": 1}, "old", ["old.example"]) + "  fault: {abort: {httpStatus: 503}}\n")
    status, out = await explain(app, host="Shop", path="/x/../cart?q=1")
    assert status == 200 and out["route"] == "web/rule1" and out["answer"]["cluster"] == "a"
    assert out["clusters"]["b"]["weight"] == 0 and out["clusters"]["a"]["healthy"] is True
    status, out = await explain(app, host="shop", path="/cart", header=["X-Canary: 1"])
    assert out["route"] == "web/rule0" and out["answer"]["cluster"] == "b"
    status, out = await explain(app, host="old.example", path="/")
    assert out["before_choice"]["fault"]["abort_status"] == 503  # (the answer drawn after it is the choice's)
    status, out = await explain(app, host="nowhere", path="/")
    assert out == {"route": None, "answer": {"status": 404, "reason": "no route for host 'nowhere'"}}
    status, out = await explain(app, path="/")
    assert status == 400 and "host=" in out["error"]
    status, out = await explain(app, host="shop", path="/", header=["no colon"])
    assert status == 400
    app.metrics.flush()
    assert a.seen == [] and b.seen == []
    assert app.metrics.registry.get_sample_value("router_decisions_total", {"reason": "weighted"}) in (None, 0.0)
