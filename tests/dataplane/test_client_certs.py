"""Client certificates on the TLS listener (mutual TLS), X-Forwarded-Client-Cert, and the lowest TLS
version: on sockets, with certificates from two CAs (the listener's and the clients')."""
import asyncio
import hashlib
import os
import ssl
import urllib.parse

import pytest
import trustme

from router.dataplane.headers import forwarding_headers, validate_request
from router.dataplane.tls import client_certificate_element, rfc2253
from tests.conftest import cluster_docs, read_response, router_doc, split_doc, wait_for
from tests.dataplane.test_tls import client_context, https, write_pair

FORGED = b"X-Forwarded-Client-Cert: Hash=forged;Subject=\"CN=admin\"\r\n"


@pytest.fixture
def pki(tmp_path):
    """The listener's CA and pair, the clients' CA (its bundle in client-ca.pem) and one client certificate."""
    server_ca, client_ca = trustme.CA(), trustme.CA()
    cert, key, _ = write_pair(tmp_path, server_ca)
    bundle = tmp_path / "client-ca.pem"
    bundle.write_bytes(client_ca.cert_pem.bytes())
    client = client_ca.issue_cert("client.example.com", common_name="client-1", organization_name="Acme, Inc.")
    return {"server_ca": server_ca, "client_ca": client_ca, "cert": cert, "key": key, "bundle": str(bundle),
            "client": client}


def with_client(pki, leaf=None) -> ssl.SSLContext:
    ctx = client_context(pki["server_ca"])
    if leaf is not None:
        leaf.configure_cert(ctx)
    return ctx


def der_of(leaf) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


async def get(port: int, ctx: ssl.SSLContext, extra: bytes = b"") -> int:
    """The status of one GET on a new connection; 0 when the TLS layer refused it (during the handshake,
    or, under TLS 1.3, as the answer to the request: the server checks the client's certificate after
    the client considers the handshake done)."""
    try:
        reader, writer = await https(port, ctx)
    except (ssl.SSLError, ConnectionError):
        return 0
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n" + extra + b"\r\n")
        return (await read_response(reader))[0]
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return 0
    finally:
        writer.close()


async def test_required_client_certificates_admit_only_the_client_cas_and_name_the_client(backends, router, pki,
                                                                                          tmp_path):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) + router_doc(
        tls={"certFile": pki["cert"], "keyFile": pki["key"], "clientCertificates": {"caFile": pki["bundle"]}}))
    assert await get(app.port, with_client(pki, pki["client"]), FORGED) == 200
    xfcc = b.seen[-1].headers["X-Forwarded-Client-Cert"]
    assert xfcc == ("Hash=" + hashlib.sha256(der_of(pki["client"])).hexdigest() +
                    ';Subject="CN=client-1,OU=' + xfcc.split(",OU=")[1].split(",")[0] +
                    ',O=Acme\\\\, Inc.";DNS=client.example.com')  # the forged one replaced, not kept
    # without a certificate, or with one from another CA: refused, nothing reaches the cluster, counted
    stranger = trustme.CA().issue_cert("client.example.com")
    for ctx in (with_client(pki), with_client(pki, stranger)):
        assert await get(app.port, ctx) == 0
    assert len(b.seen) == 1
    await wait_for(lambda: app.metrics.registry.get_sample_value(
        "router_rejected_requests_total", {"code": "0", "reason": "tls handshake"}) == 2, what="both counted")
    state = app.state()["tls"]
    assert state["client_certificates"] == {"ca_file": pki["bundle"], "required": True, "forward_cert": False}


async def test_forward_cert_puts_the_certificate_itself_in_the_header(backends, router, pki):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) + router_doc(
        tls={"certFile": pki["cert"], "keyFile": pki["key"],
             "clientCertificates": {"caFile": pki["bundle"], "forwardCert": True}}))
    assert await get(app.port, with_client(pki, pki["client"])) == 200
    xfcc = b.seen[-1].headers["X-Forwarded-Client-Cert"]
    hash_part, cert_part, rest = xfcc.split(";", 2)
    assert hash_part == "Hash=" + hashlib.sha256(der_of(pki["client"])).hexdigest() and rest.startswith("Subject=")
    assert cert_part.startswith('Cert="') and cert_part.endswith('"')
    pem = urllib.parse.unquote(cert_part[6:-1])  # Envoy's encoding: the PEM, URL-encoded, quoted
    assert ssl.PEM_cert_to_DER_cert(pem) == der_of(pki["client"])
    assert not any(c in cert_part[6:-1] for c in ',;="\n ')  # nothing in it that the header's syntax uses
    assert app.state()["tls"]["client_certificates"]["forward_cert"] is True


async def test_optional_client_certificates_pass_clients_without_one(backends, router, pki):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) + router_doc(
        tls={"certFile": pki["cert"], "keyFile": pki["key"],
             "clientCertificates": {"caFile": pki["bundle"], "required": False}}))
    assert await get(app.port, with_client(pki), FORGED) == 200
    assert "X-Forwarded-Client-Cert" not in b.seen[-1].headers  # a client's own is dropped
    assert await get(app.port, with_client(pki, pki["client"])) == 200
    assert b.seen[-1].headers["X-Forwarded-Client-Cert"].startswith(
        "Hash=" + hashlib.sha256(der_of(pki["client"])).hexdigest() + ";")
    # a certificate that does not verify is refused even when certificates are optional
    assert await get(app.port, with_client(pki, trustme.CA().issue_cert("x.example.com"))) == 0
    assert len(b.seen) == 2


async def test_a_new_client_ca_applies_to_new_handshakes(backends, router, pki, tmp_path):
    """The client CA bundle is watched like the certificate files: after a rotation, clients of the old CA
    are refused at their next handshake and the new CA's are admitted."""
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) + router_doc(
        tls={"certFile": pki["cert"], "keyFile": pki["key"], "clientCertificates": {"caFile": pki["bundle"]}}),
        watch_interval_s=0.05)
    old_client = with_client(pki, pki["client"])
    assert await get(app.port, old_client) == 200
    new_ca = trustme.CA()
    tmp = tmp_path / "client-ca.new"
    tmp.write_bytes(new_ca.cert_pem.bytes())
    os.replace(tmp, pki["bundle"])
    new_client = with_client(pki, new_ca.issue_cert("client.example.com"))

    async def rotated() -> bool:
        return await get(app.port, old_client) == 0 and await get(app.port, new_client) == 200
    deadline = asyncio.get_running_loop().time() + 5
    while not await rotated():
        assert asyncio.get_running_loop().time() < deadline, "the new client CA was not taken"
        await asyncio.sleep(0.05)


async def test_min_version_refuses_older_clients(backends, router, pki):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) + router_doc(
        tls={"certFile": pki["cert"], "keyFile": pki["key"], "minVersion": "1.3"}))
    old = with_client(pki)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await get(app.port, old) == 0
    assert await get(app.port, with_client(pki)) == 200
    assert app.state()["tls"]["min_version"] == "1.3"


def test_listener_tls_settings_are_checked(tmp_path, pki):
    from router.config.loader import ConfigError, load_config
    bad = [({"caFile": str(tmp_path / "missing.pem")}, "spec.tls.clientCertificates.caFile", "cannot read"),
           ({"caFile": pki["key"]}, "spec.tls.clientCertificates.caFile", "no PEM certificate"),
           ({"required": True}, "spec.tls.clientCertificates.caFile", "required"),
           ({"caFile": pki["bundle"], "required": "sometimes"}, "spec.tls.clientCertificates.required", ""),
           ({"caFile": pki["bundle"], "forwardCert": "pem"}, "spec.tls.clientCertificates.forwardCert", "")]
    for clients, field, words in bad:
        path = tmp_path / "r.yaml"
        path.write_text(cluster_docs({"a": 1}) + split_doc({"a": 1}) + router_doc(
            tls={"certFile": pki["cert"], "keyFile": pki["key"], "clientCertificates": clients}))
        with pytest.raises(ConfigError) as err:
            load_config(str(path))
        assert field in str(err.value) and words in str(err.value), str(err.value)
    path.write_text(cluster_docs({"a": 1}) + split_doc({"a": 1}) + router_doc(
        tls={"certFile": pki["cert"], "keyFile": pki["key"], "minVersion": "1.1"}))
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert "spec.tls.minVersion" in str(err.value) and '"1.2" or "1.3"' in str(err.value)


class FakeSslObject:
    def __init__(self, der: bytes | None, info: dict):
        self.der, self.info = der, info

    def getpeercert(self, binary_form=False):
        return self.der if binary_form else self.info


def test_client_certificate_element_quotes_escapes_and_never_breaks_a_header_line():
    info = {"subject": ((("countryName", "US"),), (("organizationName", 'Evil "Corp"; x=1'),),
                        (("commonName", "a\r\nX-Injected: 1"),)),
            "subjectAltName": (("URI", "spiffe://edge/ns/a/sa/b"), ("URI", "spiffe://second"),
                               ("DNS", "a.example.com"), ("DNS", "b.example.com"), ("IP Address", "10.0.0.1"))}
    element = client_certificate_element(FakeSslObject(b"der", info))
    assert b"\r" not in element and b"\n" not in element
    assert element == ("Hash=" + hashlib.sha256(b"der").hexdigest() +
                       ';Subject="CN=aX-Injected: 1,O=Evil \\\\\\"Corp\\\\\\"\\\\; x=1,C=US"'
                       ";URI=spiffe://edge/ns/a/sa/b;DNS=a.example.com;DNS=b.example.com").encode()
    assert client_certificate_element(FakeSslObject(None, {})) == b""
    assert rfc2253(((("commonName", " lead, trail "),),)) == "CN=\\ lead\\, trail\\ "


def test_forwarding_keeps_a_trusted_proxys_client_cert_and_adds_its_own():
    facts = validate_request("1.1", [(b"host", b"h"), (b"x-forwarded-client-cert", b"Hash=aa")])

    def xfcc(trusted: bool, own: bytes) -> list[bytes]:
        head = forwarding_headers(facts, b"10.0.0.1", b"10.0.0.1", trusted, b"edge", False, b"https", own)
        return [line for line in head.split(b"\r\n") if line.startswith(b"X-Forwarded-Client-Cert")]

    assert xfcc(True, b"Hash=bb") == [b"X-Forwarded-Client-Cert: Hash=aa,Hash=bb"]
    assert xfcc(True, b"") == [b"X-Forwarded-Client-Cert: Hash=aa"]
    assert xfcc(False, b"Hash=bb") == [b"X-Forwarded-Client-Cert: Hash=bb"]
    assert xfcc(False, b"") == []
