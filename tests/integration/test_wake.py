"""Wake triggers: deduplicated per (service, cluster), backoff after failure, counted; deadline headers."""

from router.config.model import ClusterConfig, Endpoint, ServiceConfig
from router.control.activator import client_deadline_s
from router.control.wake import FakeWake, HttpWake, WakeError, WakeManager
from tests.conftest import raw_upstream, wait_for

SVC = ServiceConfig("svc", ("svc.example.com",), wake_path="/wake", wake_method="POST")


def cluster(port: int = 1) -> ClusterConfig:
    return ClusterConfig("a", (), Endpoint("http", "127.0.0.1", port))


async def test_wakes_are_deduplicated_and_back_off_after_failure():
    fake = FakeWake()
    counted = []
    woken = []
    mgr = WakeManager(fake, lambda s, c: woken.append((s, c)), lambda c, r: counted.append(r))
    assert mgr.request(SVC, cluster()) and not mgr.request(SVC, cluster())  # one in progress
    await wait_for(lambda: woken, what="wake done")
    assert fake.calls == [("svc", "a")] and counted == ["deduplicated", "ok"]
    assert not mgr.request(SVC, cluster())  # still marked woken until the copy is ready
    mgr.done("svc", "a")
    fake.fail = 1
    assert mgr.request(SVC, cluster())
    await wait_for(lambda: "error" in counted, what="failed wake")
    assert not mgr.request(SVC, cluster())  # backing off
    mgr.not_before[("svc", "a")] = 0.0
    assert mgr.request(SVC, cluster())
    await wait_for(lambda: counted.count("ok") == 2, what="retried wake")
    mgr.stop()


async def test_http_wake_sends_the_configured_request_with_the_service_host():
    seen = []

    async def handle(reader, writer):
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
    async with raw_upstream(handle) as port:
        wake = HttpWake()
        await wake.wake(SVC, cluster(port))
        await wait_for(lambda: seen, what="wake request")
        wake.close()
    assert seen[0].startswith(b"POST /wake HTTP/1.1\r\n") and b"Host: svc.example.com\r\n" in seen[0]


async def test_http_wake_failure_is_an_error():
    try:
        await HttpWake(timeout_s=0.5).wake(SVC, cluster(1))  # nothing listens on port 1
    except WakeError as exc:
        assert "cannot reach a" in str(exc)
    else:
        raise AssertionError("expected WakeError")


def test_client_deadline_headers():
    assert client_deadline_s([(b"X-Request-Timeout", b"2.5")]) == 2.5
    assert client_deadline_s([(b"grpc-timeout", b"100m")]) == 0.1
    assert client_deadline_s([(b"grpc-timeout", b"3S")]) == 3.0
    assert client_deadline_s([(b"grpc-timeout", b"2H")]) == 7200.0
    assert client_deadline_s([(b"grpc-timeout", b"1234567890S")]) is None  # more than 8 digits
    assert client_deadline_s([(b"x-request-timeout", b"soon")]) is None
    assert client_deadline_s([]) is None
