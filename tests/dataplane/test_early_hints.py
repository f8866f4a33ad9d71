"""Router earlyHints: a cluster's 103 Early Hints passed on before its final answer (end-to-end fields only;
to HTTP/2 clients only with `http2`; never to HTTP/1.0; a bounded number), and dropped when off."""
import asyncio

import pytest

from router.config.errors import ConfigError
from router.config.loader import load_config
from router.dataplane.relay import MAX_HINTS
from tests.conftest import cluster_docs, raw_request, raw_upstream, router_doc, split_doc
from tests.h2client import H2Client

HINT = (b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload; as=style\r\n"
        b"Connection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\r\n")
FINAL = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nLink: </app.css>; rel=preload; as=style\r\n\r\nok"


def hinting_cluster(hints: int):
    """A cluster answering every request with `hints` 103s, then 200 "ok"."""
    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                writer.write(HINT * hints)
                await writer.drain()
                writer.write(FINAL)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    return raw_upstream(handle)


async def hinted_router(router, port: int, early_hints) -> object:
    spec = {"http2": {"cleartext": True}}
    if early_hints is not None:
        spec["earlyHints"] = early_hints
    return await router(cluster_docs({"a": port}) + split_doc({"a": 1}) + router_doc(**spec))


def informational(raw: bytes) -> list[bytes]:
    """The 1xx heads before the final answer, in order."""
    heads = []
    while raw.startswith(b"HTTP/1.1 1"):
        head, raw = raw.split(b"\r\n\r\n", 1)
        heads.append(head)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\nok"), raw
    return heads


@pytest.mark.parametrize("setting", [True, "http2", False, None])
async def test_hints_reach_the_clients_the_setting_names(router, setting):
    async with hinting_cluster(1) as port:
        app = await hinted_router(router, port, setting)
        raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        heads = informational(raw)
        if setting is True:
            (head,) = heads
            lines = head.split(b"\r\n")
            assert lines[0] == b"HTTP/1.1 103 Early Hints"
            assert lines[1:] == [b"Link: </app.css>; rel=preload; as=style"]  # hop-by-hop and named fields go
        else:
            assert heads == []
        client = await H2Client.open(app.port)
        try:
            got = await client.response(client.request("GET", "/"))
            assert got.status == 200 and bytes(got.data) == b"ok"
            sent = client.streams[1].informational
            if setting in (True, "http2"):
                assert len(sent) == 1 and sent[0][b":status"] == b"103"
                assert sent[0][b"link"] == b"</app.css>; rel=preload; as=style" and b"x-secret" not in sent[0]
            else:
                assert sent == []
        finally:
            client.close()


async def test_no_hints_to_http10_and_at_most_a_few_a_request(router):
    async with hinting_cluster(MAX_HINTS + 3) as port:
        app = await hinted_router(router, port, True)
        raw = await raw_request(app.port, b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"ok")  # HTTP/1.0: no 1xx (RFC 9110 15.2)
        raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n"
                                          b"Connection: close\r\n\r\n")
        first, second = raw.split(b"\r\n\r\nok", 1)
        assert len(informational(first + b"\r\n\r\nok")) == MAX_HINTS
        assert len(informational(second + b"\r\n\r\nok")) == MAX_HINTS  # counted per request


def test_the_setting_is_checked_at_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(cluster_docs({"a": 1}) + split_doc({"a": 1}) + router_doc(earlyHints="always"))
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert "earlyHints" in str(err.value) and "expected true, false or http2" in str(err.value)
