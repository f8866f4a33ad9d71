"""A route's sourceRanges on real sockets: 403 for a client address outside allow or inside deny, nothing
sent to a cluster; the address is the one rate limits by client use (a trusted proxy's X-Forwarded-For
believed, a client's own not); config errors name their line."""
import ipaddress

import pytest

from router.config.loader import ConfigError, load_config
from router.dataplane.headers import source_allowed
from tests.conftest import cluster_docs, router_doc, split_doc
from tests.integration.test_rate_limit import get


def ranged_split(name: str, hosts: list[str], ranges: str) -> str:
    return split_doc({"a": 1}, name, hosts) + f"  sourceRanges: {ranges}\n"


async def test_allow_and_deny_answer_403_and_send_nothing(backends, router):
    a, = await backends("a")
    app = await router(cluster_docs({"a": a.port})
                       + ranged_split("office", ["office"], "{allow: [10.0.0.0/8, 127.0.0.0/30]}")
                       + ranged_split("elsewhere", ["elsewhere"], "{allow: [10.0.0.0/8]}")
                       + ranged_split("blocked", ["blocked"], "{deny: [127.0.0.1/32]}")
                       + split_doc({"a": 1}, "open", ["open"]))
    assert (await get(app.port, "office"))[0] == 200  # 127.0.0.1 is in 127.0.0.0/30
    status, headers, body = await get(app.port, "elsewhere")
    assert status == 403 and body == b"client address not allowed on this route\n"
    assert "x-router-cluster" not in headers
    assert (await get(app.port, "blocked"))[0] == 403
    # a client's own X-Forwarded-For is not believed (it is not a trusted proxy)
    assert (await get(app.port, "elsewhere", "X-Forwarded-For: 10.1.2.3"))[0] == 403
    assert (await get(app.port, "open"))[0] == 200
    assert [s.headers["Host"] for s in a.seen] == ["office", "open"]
    (state,) = [r for r in app.state()["routes"] if r["name"] == "blocked"]
    assert state["source_ranges"] == {"allow": [], "deny": ["127.0.0.1/32"]}
    app.metrics.flush()
    assert app.metrics.registry.get_sample_value("router_requests_total",
                                                 {"cluster": "-", "code": "403", "route": "elsewhere"}) == 2


async def test_behind_a_trusted_proxy_the_forwarded_client_is_judged(backends, router):
    a, = await backends("a")
    app = await router(cluster_docs({"a": a.port})
                       + ranged_split("office", ["office"], "{allow: [10.0.0.0/8], deny: [10.9.0.0/16]}")
                       + router_doc(trustedProxies=["127.0.0.1/32"]))
    assert (await get(app.port, "office", "X-Forwarded-For: 10.1.2.3"))[0] == 200
    assert (await get(app.port, "office", "X-Forwarded-For: 10.9.0.1"))[0] == 403  # deny wins
    assert (await get(app.port, "office", "X-Forwarded-For: 192.0.2.1"))[0] == 403
    assert (await get(app.port, "office"))[0] == 403  # the proxy itself is not in allow
    assert len(a.seen) == 1


def test_source_allowed_rules():
    nets = lambda *c: tuple(ipaddress.ip_network(x) for x in c)  # noqa: E731
    assert source_allowed("10.1.1.1", nets("10.0.0.0/8"), ())
    assert not source_allowed("11.1.1.1", nets("10.0.0.0/8"), ())
    assert not source_allowed("10.1.1.1", nets("10.0.0.0/8"), nets("10.1.0.0/16"))
    assert source_allowed("::ffff:10.1.1.1", nets("10.0.0.0/8"), ())  # an IPv4 client on a dual-stack socket
    assert source_allowed("2001:db8::1", nets("2001:db8::/32"), nets("10.0.0.0/8"))
    assert not source_allowed("not-an-address", nets("10.0.0.0/8"), ())
    assert source_allowed("not-an-address", (), nets("10.0.0.0/8"))


@pytest.mark.parametrize("ranges, message", [("{allow: [10.0.0.0/33]}", "not a CIDR"),
                                             ("{allow: [], deny: []}", "needs allow or deny"),
                                             ("{only: [10.0.0.0/8]}", "only")])
def test_bad_source_ranges_are_reported_with_their_line(tmp_path, ranges, message):
    path = tmp_path / "c.yaml"
    path.write_text(cluster_docs({"a": 1}) + ranged_split("office", ["office"], ranges))
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert "spec.sourceRanges" in str(err.value) and message in str(err.value), str(err.value)
