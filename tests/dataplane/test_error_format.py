"""Router errorFormat: the router's own answers as RFC 9457 problem documents (always, or for clients whose
Accept names JSON), text otherwise; bodies the router relays or was given (a direct response) unchanged."""
import json

from tests.conftest import cluster_docs, raw_request, response_of, router_doc, split_doc


async def answer(port: int, host: str, extra: str = "", method: str = "GET") -> tuple[int, dict, bytes]:
    return response_of(await raw_request(port, f"{method} / HTTP/1.1\r\nHost: {host}\r\n{extra}"
                                               "Connection: close\r\n\r\n".encode()))


async def test_problem_documents_always_or_by_accept(backends, router):
    a, = await backends("a")
    docs = cluster_docs({"a": a.port}) + split_doc({"a": 1}, "s", ["h"])
    always = await router(docs + router_doc(errorFormat="problem-json"))
    status, headers, body = await answer(always.port, "nowhere")
    assert (status, headers["content-type"]) == (404, "application/problem+json")
    assert json.loads(body) == {"type": "about:blank", "title": "Not Found", "status": 404,
                                "detail": "no route for host 'nowhere'"}
    auto = await router(docs + router_doc(errorFormat="auto"))
    for accept, is_json in (("Accept: application/json\r\n", True), ("Accept: application/problem+json\r\n", True),
                            ("Accept: text/html,application/json;q=0.9\r\n", False), ("", False)):
        status, headers, body = await answer(auto.port, "nowhere", accept)
        assert status == 404 and (headers["content-type"] == "application/problem+json") == is_json, accept
        assert (json.loads(body)["status"] == 404) if is_json else body == b"no route for host 'nowhere'\n"
    # a hostile request refused before routing is answered the same way
    status, headers, body = await answer(auto.port, "h", "Accept: application/json\r\nContent-Length: 1\r\n"
                                                         "Transfer-Encoding: chunked\r\n", "POST")
    assert status == 400 and json.loads(body)["status"] == 400
    assert (await answer(auto.port, "h", "Accept: application/json\r\n"))[0] == 200  # proxied: the cluster's own
    text = await router(docs)
    assert (await answer(text.port, "nowhere", "Accept: application/json\r\n"))[1]["content-type"].startswith(
        "text/plain")
