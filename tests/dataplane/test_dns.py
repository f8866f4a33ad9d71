"""Named cluster endpoints: resolved once and refreshed off the request path, last good addresses kept
when the resolver fails, connects spread over a name's addresses and falling through dead ones."""
import asyncio
import socket

import pytest

from router.dataplane.dns import DnsCache
from tests.conftest import cluster_docs, keepalive_text, split_doc, wait_for


class FakeResolver:
    """getaddrinfo stand-in: answers from `table`, counts lookups, can hang or fail on demand."""

    def __init__(self, table: dict[str, list[str]]):
        self.table, self.calls = table, []
        self.hang = asyncio.Event()
        self.hang.set()  # set: answer at once

    async def __call__(self, host, port):
        self.calls.append(host)
        await self.hang.wait()
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, f"unknown host {host}")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in self.table[host]]


async def test_one_lookup_for_concurrent_connects_then_addresses_in_turn():
    fake = FakeResolver({"c.example": ["10.0.0.1", "10.0.0.2", "10.0.0.1"]})
    dns = DnsCache(asyncio.get_running_loop(), fake, refresh_s=60)
    try:
        orders = await asyncio.gather(*[dns.resolve("c.example", 80) for _ in range(5)])
        assert fake.calls == ["c.example"]  # shared by all five
        assert {tuple(o) for o in orders} == {("10.0.0.1", "10.0.0.2"), ("10.0.0.2", "10.0.0.1")}
        assert [o[0] for o in orders] == ["10.0.0.1", "10.0.0.2"] * 2 + ["10.0.0.1"]
    finally:
        dns.close()


async def test_failed_refresh_keeps_the_last_good_addresses_and_a_new_answer_replaces_them():
    fake = FakeResolver({"c.example": ["10.0.0.1"]})
    dns = DnsCache(asyncio.get_running_loop(), fake, refresh_s=0.02)
    try:
        assert await dns.resolve("c.example", 80) == ["10.0.0.1"]
        del fake.table["c.example"]  # the resolver now fails for it
        await wait_for(lambda: dns.errors.get(("c.example", 80)), what="a failed refresh")
        assert await dns.resolve("c.example", 80) == ["10.0.0.1"]
        assert dns.describe()["c.example:80"]["error"].startswith("[Errno")
        fake.table["c.example"] = ["10.0.0.9"]
        await wait_for(lambda: dns.addresses[("c.example", 80)] == ["10.0.0.9"], what="the new address")
        assert dns.describe()["c.example:80"] == {"addresses": ["10.0.0.9"], "error": None}
        with pytest.raises(socket.gaierror):
            await dns.resolve("never.example", 80)  # never resolved: the connect fails
    finally:
        dns.close()


async def test_a_hanging_resolver_delays_only_its_first_lookup_and_a_caller_giving_up_does_not_cancel_it():
    fake = FakeResolver({"slow.example": ["10.0.0.1"], "ok.example": ["10.0.0.2"]})
    dns = DnsCache(asyncio.get_running_loop(), fake, refresh_s=60, timeout_s=5)
    try:
        fake.hang.clear()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(dns.resolve("slow.example", 80), 0.05)  # the connect timeout
        fake.hang.set()
        assert await dns.resolve("slow.example", 80) == ["10.0.0.1"]
        assert fake.calls == ["slow.example"]  # the same lookup finished for the next caller
        dns.addresses[("slow.example", 80)] = ["10.0.0.1"]
        fake.hang.clear()  # the resolver hangs from now on: cached names do not wait for it
        assert await asyncio.wait_for(dns.resolve("slow.example", 80), 0.05) == ["10.0.0.1"]
    finally:
        fake.hang.set()
        dns.close()


async def test_named_endpoint_is_served_and_a_dead_address_is_skipped(backends, router):
    """`localhost` may resolve to ::1 and 127.0.0.1; the backend listens on 127.0.0.1 only: every
    request is still served, and the cluster is never ejected for the dead address."""
    (a,) = await backends("a")
    docs = cluster_docs({"a": a.port}).replace(f"http://127.0.0.1:{a.port}", f"http://cluster-a.test:{a.port}")
    app = await router(docs + split_doc({"a": 1}))
    app.ctx.pool.dns.lookup = FakeResolver({"cluster-a.test": ["::1", "127.0.0.1"]})
    results = await asyncio.gather(*[keepalive_text(app.port, 1) for _ in range(6)])  # all 200
    assert results == [["a"]] * 6
    assert app.ctx.health.is_healthy("a", app.ctx.clock())
    assert app.state()["dns"][f"cluster-a.test:{a.port}"]["addresses"] == ["::1", "127.0.0.1"]


async def test_a_name_that_does_not_resolve_fails_the_cluster_with_that_reason(backends, router):
    (b,) = await backends("b")
    docs = cluster_docs({"a": 1, "b": b.port}).replace("http://127.0.0.1:1\n", "http://nowhere.test:1\n")
    app = await router(docs + split_doc({"a": 1, "b": 1}))
    app.ctx.pool.dns.lookup = FakeResolver({})
    assert await keepalive_text(app.port, 20) == ["b"] * 20  # a's failed lookup sent its request to b
    health = app.state()["clusters"]["a"]["health"]
    assert not health["healthy"] and health["last_reason"] == "name resolution failed"
