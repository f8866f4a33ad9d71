"""Clusters behind TLS (Cluster spec.tls): the cluster's own CAs, a client certificate for mutual
TLS and the server name, used alike by requests and probes; a certificate the router does not
accept ejects the cluster with the reason and the request goes elsewhere; a renewed client
certificate is used for new connections; bad settings are refused with FILE:LINE: field."""
import os
import ssl
import time

import pytest
import trustme
import yaml

from router.config.errors import ConfigError
from router.config.loader import load_config
from tests.conftest import Backend, cluster_docs, raw_request, response_of, split_doc, wait_for


class Pki:
    """A CA, a server certificate for cluster.test, and a client pair from the same CA in files."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("cluster.test")
        self.ca_file = str(tmp_path / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.cert_file, self.key_file = str(tmp_path / "client.pem"), str(tmp_path / "client-key.pem")
        self.write_client(self.ca)

    def write_client(self, ca: trustme.CA) -> None:
        """A client pair for edge-router.client from `ca`, replacing the files whole (as a Secret update)."""
        issued = ca.issue_cert("edge-router.client")
        for path, blob in ((self.cert_file, issued.cert_chain_pems[0].bytes()),
                           (self.key_file, issued.private_key_pem.bytes())):
            with open(path + ".new", "wb") as fh:
                fh.write(blob)
            os.replace(path + ".new", path)

    def server_context(self, require_client: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(ctx)
        if require_client:  # mutual TLS: only clients with a certificate from this CA
            self.ca.configure_trust(ctx)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


class TlsBackend(Backend):
    """Records the client certificate's names with each request."""

    def __init__(self, name: str):
        super().__init__(name)
        self.peers: list = []

    async def handle(self, request):
        cert = request.transport.get_extra_info("peercert") if request.transport else None
        if request.headers.get("User-Agent") != "edge-router-probe":
            self.peers.append(dict(cert["subjectAltName"]) if cert else None)
        return await super().handle(request)


def tls_cluster(name: str, port: int, **tls) -> str:
    return "---\n" + yaml.safe_dump({"apiVersion": "edge.router/v1alpha1", "kind": "Cluster",
                                     "metadata": {"name": name, "labels": {"region": name}},
                                     "spec": {"endpoint": f"https://127.0.0.1:{port}", "tls": tls}})


async def get(port: int) -> tuple[int, dict, bytes]:
    return response_of(await raw_request(port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"))


async def test_mutual_tls_with_the_clusters_own_ca_and_name(router, pki):
    b = await TlsBackend("a").start(ssl_context=pki.server_context(require_client=True))
    try:
        app = await router(tls_cluster("a", b.port, caFile=pki.ca_file, certFile=pki.cert_file,
                                       keyFile=pki.key_file, serverName="cluster.test") + split_doc({"a": 1}),
                           probes=True)
        for _ in range(3):
            status, headers, body = await get(app.port)
            assert status == 200 and headers["x-router-cluster"] == "a" and body == b"a:0"
        assert b.peers == [{"DNS": "edge-router.client"}] * 3  # the router showed its client certificate
        await wait_for(lambda: b.probes >= 2, what="two probes over TLS")  # probes speak TLS the same way
        state = app.state()["clusters"]["a"]
        assert state["health"]["healthy"] and state["tls"]["server_name"] == "cluster.test"
        assert state["tls"]["ca_file"] == pki.ca_file and state["tls"]["cert_not_after"] > "2026"
        expiry = app.metrics.registry.get_sample_value("router_upstream_tls_certificate_expiry_timestamp_seconds",
                                                       {"cluster": "a"})
        assert expiry is not None and expiry > time.time()
    finally:
        await b.stop()


async def test_a_certificate_the_router_does_not_accept_ejects_the_cluster_with_the_reason(router, backends, pki):
    """One cluster's certificate is from a CA the system does not trust, another's does not carry the
    endpoint's name: each is ejected at its first connect, named why, and the request goes to c."""
    untrusted = await TlsBackend("untrusted").start(ssl_context=pki.server_context(require_client=False))
    misnamed = await TlsBackend("misnamed").start(ssl_context=pki.server_context(require_client=False))
    (c,) = await backends("c")
    try:
        config = (cluster_docs({"c": c.port}) + tls_cluster("misnamed", misnamed.port, caFile=pki.ca_file) +
                  "---\n" + yaml.safe_dump({"apiVersion": "edge.router/v1alpha1", "kind": "Cluster",
                                            "metadata": {"name": "untrusted", "labels": {"region": "untrusted"}},
                                            "spec": {"endpoint": f"https://127.0.0.1:{untrusted.port}"}}) +
                  split_doc({"untrusted": 1000, "misnamed": 1000, "c": 1}))
        app = await router(config)
        for _ in range(4):
            status, headers, _ = await get(app.port)
            assert status == 200 and headers["x-router-cluster"] == "c"
        assert untrusted.peers == [] and misnamed.peers == []  # nothing was sent over an unverified connection
        health = {name: app.state()["clusters"][name]["health"] for name in ("untrusted", "misnamed")}
        assert "certificate not accepted" in str(health["untrusted"]) and "issuer" in str(health["untrusted"])
        assert "certificate not accepted" in str(health["misnamed"]) and "mismatch" in str(health["misnamed"])
    finally:
        await untrusted.stop()
        await misnamed.stop()


async def test_a_renewed_client_certificate_is_used_for_new_connections(router, pki):
    """The client pair starts out from a CA the cluster does not trust: 502, promptly. Once the files
    are replaced by a pair it trusts, the config reloads and the next request gets through."""
    pki.write_client(trustme.CA())
    b = await TlsBackend("a").start(ssl_context=pki.server_context(require_client=True))
    try:
        app = await router(tls_cluster("a", b.port, caFile=pki.ca_file, certFile=pki.cert_file,
                                       keyFile=pki.key_file, serverName="cluster.test") + split_doc({"a": 1}),
                           watch_interval_s=0.05)
        t0 = time.monotonic()
        status, _, body = await get(app.port)
        assert status == 502 and time.monotonic() - t0 < 3, body
        assert b.peers == []
        version = app.version
        pki.write_client(pki.ca)
        await wait_for(lambda: app.version > version, what="the reload after the renewal")
        status, headers, body = await get(app.port)
        assert status == 200 and headers["x-router-cluster"] == "a", body
        assert b.peers == [{"DNS": "edge-router.client"}]
    finally:
        await b.stop()


def test_cluster_tls_errors_name_the_field(tmp_path, pki):
    other = trustme.CA().issue_cert("x.test")
    other_key = str(tmp_path / "other-key.pem")
    other.private_key_pem.write_to_path(other_key)
    https = {"endpoint": "https://ingress.example.com"}
    cases = [({"endpoint": "http://ingress.example.com", "tls": {"caFile": pki.ca_file}},
              "spec.tls: TLS settings need an https:// endpoint"),
             ({**https, "tls": {"caFile": str(tmp_path / "missing.pem")}}, "spec.tls.caFile: cannot read"),
             ({**https, "tls": {"caFile": pki.key_file}}, "spec.tls.caFile: no PEM certificate in"),
             ({**https, "tls": {"certFile": pki.cert_file}}, "spec.tls: certFile and keyFile go together"),
             ({**https, "tls": {"certFile": pki.cert_file, "keyFile": other_key}},
              "spec.tls.keyFile: the private key does not match"),
             ({**https, "tls": {"serverName": "not a name"}}, "spec.tls.serverName: expected a DNS name"),
             ({**https, "tls": {"insecureSkipVerify": True}}, "spec.tls.insecureSkipVerify: unknown field")]
    for i, (spec, expected) in enumerate(cases):
        path = tmp_path / f"c{i}.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": "edge.router/v1alpha1", "kind": "Cluster",
                                        "metadata": {"name": "a"}, "spec": spec}))
        with pytest.raises(ConfigError) as err:
            load_config(str(path))
        assert f"{path}:" in str(err.value) and expected in str(err.value), (expected, str(err.value))
    ok = tmp_path / "ok.yaml"
    ok.write_text(tls_cluster("a", 8443, caFile=pki.ca_file, serverName="Ingress.Example.COM."))
    (cluster,) = load_config(str(ok)).clusters
    assert cluster.endpoint.tls.server_name == "ingress.example.com"
    assert cluster.endpoint.connect_options()["server_hostname"] == "ingress.example.com"
    # connections made under other TLS settings are never shared with this cluster's
    from dataclasses import replace

    from router.core.snapshot import pool_key
    plain = replace(cluster.endpoint, tls=None)
    renamed = replace(cluster.endpoint, tls=replace(cluster.endpoint.tls, server_name="other.example.com"))
    assert len({pool_key(cluster.endpoint), pool_key(plain), pool_key(renamed)}) == 3
