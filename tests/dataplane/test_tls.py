"""TLS on the client listener: HTTPS proxied with the right forwarding headers, the handshake
bounded by the header deadline, and certificates replaced while serving (a bad pair refused)."""
import asyncio
import os
import signal
import ssl

import aiohttp
import pytest
import trustme
from hypothesis import given, strategies as st

from tests.conftest import (cluster_docs, fuzz_settings, read_response, read_until_close, response_of, router_doc,
                            router_process, split_doc, wait_for)


@pytest.fixture
def ca():
    return trustme.CA()


def write_pair(tmp_path, ca, name: str = "") -> tuple[str, str, bytes]:
    """A localhost certificate from `ca` in cert.pem / key.pem (replaced in place); its DER form."""
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    for path, blob in ((cert, issued.cert_chain_pems[0].bytes()), (key, issued.private_key_pem.bytes())):
        tmp = path.with_suffix(".new")
        tmp.write_bytes(blob)
        os.replace(tmp, path)  # as a Secret update swaps files: never half written
    return str(cert), str(key), ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())


def client_context(*cas) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    for ca in cas:
        ca.configure_trust(ctx)
    return ctx


async def https(port: int, ctx: ssl.SSLContext):
    return await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")


async def test_https_is_proxied_with_https_forwarding_headers(backends, router, ca, tmp_path):
    (b,) = await backends("a")
    cert, key, _ = write_pair(tmp_path, ca)
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(tls={"certFile": cert, "keyFile": key}))
    reader, writer = await https(app.port, client_context(ca))
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"  # not h2
    for path in ("/one", "/two"):  # keep-alive over one TLS connection
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["x-router-cluster"] == "a" and body == b"a:0"
        assert b.seen[-1].path == path
    writer.close()
    seen = b.seen[-1].headers
    assert seen["X-Forwarded-Proto"] == "https" and seen["Forwarded"].startswith("for=127.0.0.1;proto=https")
    # plain HTTP sent to the TLS port: a 400 that says so, then closed; nothing reaches the cluster
    r, w = await asyncio.open_connection("127.0.0.1", app.port)
    w.write(b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\nGET /second HTTP/1.1\r\nHost: h\r\n\r\n")
    status, headers, body = response_of(await read_until_close(r, 5.0))
    assert status == 400 and headers["connection"] == "close"
    assert body.endswith(b"plain HTTP request sent to the HTTPS port\n")
    w.close()
    assert len(b.seen) == 2
    # and the listener still serves TLS
    reader, writer = await https(app.port, client_context(ca))
    writer.write(b"GET /three HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_silent_client_is_closed_at_the_header_deadline(backends, router, ca, tmp_path):
    """A TCP connection that never starts its handshake is closed at headerRead, as a silent
    plain-text one is, instead of holding a socket for the TLS library's 60 s."""
    (b,) = await backends("a")
    cert, key, _ = write_pair(tmp_path, ca)
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(tls={"certFile": cert, "keyFile": key}, timeouts={"headerRead": "300ms"}))
    loop = asyncio.get_running_loop()
    t = loop.time()
    r, w = await asyncio.open_connection("127.0.0.1", app.port)
    assert await read_until_close(r, 5.0) == b""
    assert loop.time() - t < 3.0
    w.close()


async def test_handshakes_count_toward_max_connections(backends, router, ca, tmp_path):
    """Connections still in their TLS handshake hold sockets too: past maxConnections a new one is closed
    at once (not at the deadline); a stalled handshake is closed at headerRead and counted; once they
    are gone, handshakes are served again."""
    (b,) = await backends("a")
    cert, key, _ = write_pair(tmp_path, ca)
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(tls={"certFile": cert, "keyFile": key}, limits={"maxConnections": 2},
                                  timeouts={"headerRead": "1500ms"}))
    silent = await asyncio.open_connection("127.0.0.1", app.port)  # no byte sent
    stalled = await asyncio.open_connection("127.0.0.1", app.port)
    stalled[1].write(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello record begun, never finished
    await wait_for(lambda: len(app.ctx.openings) == 2, what="two connections opening")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.wait_for(https(app.port, client_context(ca)), 1.0)
    assert loop.time() - t0 < 1.0  # refused at once
    rejected = app.metrics.registry.get_sample_value
    assert rejected("router_rejected_requests_total", {"code": "0", "reason": "too many connections"}) == 1
    for reader, _ in (silent, stalled):  # both closed at the deadline
        assert await read_until_close(reader, 5.0) == b""
    await wait_for(lambda: not app.ctx.openings, what="the openings ended")
    # the stalled handshake is counted, the silent connection (a TCP health check) is not
    assert rejected("router_rejected_requests_total", {"code": "0", "reason": "tls handshake"}) == 1
    for _, writer in (silent, stalled):
        writer.close()
    reader, writer = await https(app.port, client_context(ca))
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.close()
    await wait_for(lambda: not app.ctx.connections and not app.ctx.openings, what="nothing held")


@pytest.fixture
async def tls_router(backends, router, tmp_path):
    ca = trustme.CA()
    (b,) = await backends("a")
    cert, key, _ = write_pair(tmp_path, ca)
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(tls={"certFile": cert, "keyFile": key}, timeouts={"headerRead": "300ms"}))
    return app, ca


@fuzz_settings
@given(st.lists(st.one_of(st.binary(min_size=1, max_size=80),
                          st.sampled_from([b"\x16", b"\x16\x03\x01", b"\x16\x03\x03\x00\x05", b"\x80",
                                           b"\x15\x03\x03\x00\x02\x02\x28", b"GET / HTTP/1.1\r\n",
                                           b"Host: h\r\n", b"\r\n"])),
                min_size=1, max_size=8))
async def test_random_bytes_on_the_tls_port_never_crash_it_or_leak_a_connection(tls_router, pieces):
    app, ca = tls_router
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(b"".join(pieces))
        await read_until_close(reader, 2)
    except (ConnectionError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()
    await wait_for(lambda: not app.ctx.connections and not app.ctx.openings, timeout_s=3,
                   what="no client connection left")
    reader, writer = await https(app.port, client_context(ca))  # still serving
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_renewed_certificate_is_served_to_new_connections_and_a_bad_pair_is_refused(
        backends, router, ca, tmp_path):
    (b,) = await backends("a")
    cert, key, first = write_pair(tmp_path, ca)
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(tls={"certFile": cert, "keyFile": key}), watch_interval_s=0.05)
    ctx = client_context(ca)
    reader, writer = await https(app.port, ctx)
    assert writer.get_extra_info("ssl_object").getpeercert(binary_form=True) == first

    async def served() -> bytes:
        r, w = await https(app.port, ctx)
        der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
        w.close()
        return der

    async def served_is(der: bytes) -> bool:
        return await served() == der

    _, _, second = write_pair(tmp_path, ca)  # renewed in place: only the certificate files changed
    await wait_for(lambda: served_is(second), 5.0, what="the renewed certificate")
    writer.write(b"GET /still HTTP/1.1\r\nHost: h\r\n\r\n")  # the open connection carries on
    status, _, _ = await read_response(reader)
    assert status == 200
    writer.close()

    # a key that does not match: refused with its line, the last good pair keeps serving
    other = ca.issue_cert("localhost")
    (tmp_path / "key.pem").write_bytes(other.private_key_pem.bytes())
    result = await app.reloader.reload("test")
    assert not result["ok"] and any("tls.keyFile: the private key does not match" in e for e in result["errors"])
    assert await served() == second
    (app.config_dir / "router.yaml").write_text(cluster_docs({"a": b.port}) + split_doc({"a": 1}))
    result = await app.reloader.reload("test")  # TLS off is for the next start: the listener keeps it
    assert result["ok"] and result["next_start"] == ["Router spec.tls"], result
    assert await served() == second
    r, w = await https(app.port, ctx)  # still HTTPS until the restart, and said so to the cluster
    w.write(b"GET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert (await read_until_close(r, 5.0)).startswith(b"HTTP/1.1 200")
    w.close()
    assert b.seen[-1].headers["X-Forwarded-Proto"] == "https"
    state = app.state()["tls"]
    assert state["cert_file"] == cert and state["loads"] >= 2 and state["last_error"] is None, state


async def test_workers_serve_tls_and_take_a_renewed_certificate(backends, ca, tmp_path):
    (b,) = await backends("a")
    cert, key, first = write_pair(tmp_path, ca)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "c.yaml").write_text(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                                 router_doc(tls={"certFile": cert, "keyFile": key}))
    ctx = client_context(ca)

    async def served() -> bytes:
        r, w = await https(rp.port, ctx)
        w.write(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert (await read_until_close(r, 5.0)).startswith(b"HTTP/1.1 200")
        der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
        w.close()
        return der

    async with router_process(conf, "--workers", "2") as rp:
        async with aiohttp.ClientSession() as s:
            async def ready():
                async with s.get(f"http://127.0.0.1:{rp.admin_port}/readyz") as r:
                    return r.status == 200
            await wait_for(ready, timeout_s=10, interval_s=0.05, what="workers ready")
        assert all(der == first for der in await asyncio.gather(*[served() for _ in range(8)]))
        _, _, second = write_pair(tmp_path, ca)

        async def renewed() -> bool:  # every worker: several connections land on both
            return all(der == second for der in await asyncio.gather(*[served() for _ in range(8)]))
        await wait_for(renewed, timeout_s=10, interval_s=0.1, what="both workers serving the renewed certificate")
        rp.send_signal(signal.SIGTERM)
        assert await rp.wait(30) == 0


async def test_tls_pair_errors_name_the_field(tmp_path, ca):
    from router.config.errors import ConfigError
    from router.config.loader import load_config
    cert, key, _ = write_pair(tmp_path, ca)
    cases = [({"certFile": str(tmp_path / "missing.pem"), "keyFile": key}, "spec.tls.certFile: cannot read"),
             ({"certFile": key, "keyFile": key}, "spec.tls.certFile: no PEM certificate in"),
             ({"certFile": cert, "keyFile": cert}, "spec.tls.keyFile: no PEM private key in"),
             ({"certFile": cert}, "spec.tls: missing required field 'spec.tls.keyFile'")]
    for i, (tls, expected) in enumerate(cases):
        path = tmp_path / f"r{i}.yaml"
        path.write_text(router_doc(tls=tls))
        with pytest.raises(ConfigError) as err:
            load_config(str(path))
        assert expected in str(err.value), str(err.value)
        assert str(err.value).startswith(f"{path}:"), str(err.value)



def self_signed(tmp_path, not_after) -> tuple[str, str]:
    """A self-signed certificate expiring at `not_after` (UTCTime up to 2049, GeneralizedTime from 2050,
    as RFC 5280 asks and the builder does) and its key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "localhost")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
            .not_valid_after(not_after).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"cert-{not_after.year}.pem", tmp_path / f"key-{not_after.year}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_certificate_expiry_is_read_from_either_time_encoding(tmp_path, ca):
    import datetime

    from router.dataplane.tls import certificate_not_after
    utc = datetime.timezone.utc
    for when in (datetime.datetime(2049, 12, 31, 23, 59, 58, tzinfo=utc),  # UTCTime "491231235958Z"
                 datetime.datetime(2050, 1, 1, 0, 0, 1, tzinfo=utc),  # GeneralizedTime
                 datetime.datetime(2021, 6, 30, 12, 0, 0, tzinfo=utc)):
        assert certificate_not_after(self_signed(tmp_path, when)[0]) == when.timestamp()
    cert, _, _ = write_pair(tmp_path, ca)  # a chain: the first certificate is the one served
    (tmp_path / "chain.pem").write_bytes(open(cert, "rb").read() + ca.cert_pem.bytes())
    assert certificate_not_after(str(tmp_path / "chain.pem")) == certificate_not_after(cert)
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert certificate_not_after(str(tmp_path / "junk.pem")) is None
    assert certificate_not_after(str(tmp_path / "missing.pem")) is None


async def test_certificate_expiry_in_metrics_and_state_and_an_expired_one_is_warned_of(
        backends, router, ca, tmp_path, caplog):
    import datetime
    (b,) = await backends("a")
    cert, key, _ = write_pair(tmp_path, ca)
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(tls={"certFile": cert, "keyFile": key}))
    assert app.metrics.tls_not_after._value.get() == 32503680000.0  # trustme's certificates: year 3000
    assert app.state()["tls"]["not_after"] == "3000-01-01T00:00:00Z"
    # An expired pair loads (clients refuse it, OpenSSL does not): the gauge follows and a warning says so.
    old_cert, old_key = self_signed(tmp_path, datetime.datetime(2021, 6, 30, tzinfo=datetime.timezone.utc))
    os.replace(old_key, key)
    os.replace(old_cert, cert)
    assert (await app.reloader.reload("test"))["ok"]
    assert app.metrics.tls_not_after._value.get() == datetime.datetime(2021, 6, 30, tzinfo=datetime.timezone.utc
                                                                      ).timestamp()
    assert app.state()["tls"]["not_after"] == "2021-06-30T00:00:00Z"
    assert f"TLS certificate {cert} expired at 2021-06-30T00:00:00Z" in caplog.text


def write_named_pair(tmp_path, ca, host: str, stem: str) -> tuple[str, str, bytes]:
    """A certificate for `host` from `ca` in STEM.pem / STEM-key.pem (replaced whole); its DER form."""
    issued = ca.issue_cert(host)
    cert, key = tmp_path / f"{stem}.pem", tmp_path / f"{stem}-key.pem"
    for path, blob in ((cert, issued.cert_chain_pems[0].bytes()), (key, issued.private_key_pem.bytes())):
        path.with_suffix(".new").write_bytes(blob)
        os.replace(path.with_suffix(".new"), path)
    return str(cert), str(key), ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())


async def test_sni_picks_the_certificate_for_the_name_the_client_asks_for(backends, router, ca, tmp_path):
    (b,) = await backends("a")
    cert, key, default_der = write_pair(tmp_path, ca)
    shop_cert, shop_key, shop_der = write_named_pair(tmp_path, ca, "shop.example.com", "shop")
    other_cert, other_key, other_der = write_named_pair(tmp_path, ca, "*.other.org", "other")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) + router_doc(tls={
        "certFile": cert, "keyFile": key,
        "sni": [{"hosts": ["shop.example.com"], "certFile": shop_cert, "keyFile": shop_key},
                {"hosts": ["*.other.org"], "certFile": other_cert, "keyFile": other_key}]}), watch_interval_s=0.05)
    ctx = client_context(ca)

    async def served(name: str, check: ssl.SSLContext = ctx) -> bytes:
        """The certificate the router showed a client asking for `name` (verified for it), after a request."""
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port, ssl=check, server_hostname=name)
        try:
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
            writer.write(b"GET / HTTP/1.1\r\nHost: " + name.encode() + b"\r\n\r\n")
            status, headers, _ = await read_response(reader)
            assert status == 200 and headers["x-router-cluster"] == "a"
            return writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()

    assert await served("shop.example.com") == shop_der
    assert await served("api.other.org") == other_der
    # a wildcard entry covers every name under it, most specific entry first (as Envoy's server_names);
    # a certificate's own wildcard covers one label, so this client checks the chain but not the name
    unnamed = client_context(ca)
    unnamed.check_hostname = False
    assert await served("a.b.other.org", unnamed) == other_der
    assert await served("localhost") == default_der  # no entry for it: the default certificate
    with pytest.raises(ssl.SSLCertVerificationError):  # a name nothing covers gets the default, which does not fit
        await served("unknown.example.com")
    state = app.state()["tls"]
    assert [c["hosts"] for c in state["certificates"]] == [["*"], ["shop.example.com"], ["*.other.org"]]
    assert all(c["not_after"] for c in state["certificates"]) and state["cert_file"] == cert
    # a renewed certificate for one name is served from the next handshake
    loads = state["loads"]
    _, _, renewed_der = write_named_pair(tmp_path, ca, "shop.example.com", "shop")
    await wait_for(lambda: app.state()["tls"]["loads"] > loads, what="the reload after the renewal")
    assert await served("shop.example.com") == renewed_der != shop_der
    assert await served("api.other.org") == other_der


async def test_sni_entries_are_checked(tmp_path, ca):
    from router.config.errors import ConfigError
    from router.config.loader import load_config
    cert, key, _ = write_pair(tmp_path, ca)
    shop_cert, shop_key, _ = write_named_pair(tmp_path, ca, "shop.example.com", "shop")
    entry = {"hosts": ["shop.example.com"], "certFile": shop_cert, "keyFile": shop_key}
    cases = [([entry, {**entry, "hosts": ["a.example.com", "shop.example.com"]}],
              "spec.tls.sni[1].hosts[1]: 'shop.example.com' already picks another certificate"),
             ([{**entry, "keyFile": key}], "spec.tls.sni[0].keyFile: the private key does not match"),
             ([{**entry, "hosts": []}], "spec.tls.sni[0].hosts: expected at least one host name"),
             ([{"hosts": ["x.example.com"], "certFile": shop_cert}],
              "missing required field 'spec.tls.sni[0].keyFile'"),
             ([{**entry, "hosts": ["bad host"]}], "spec.tls.sni[0].hosts[0]: host must be a DNS name")]
    for i, (sni, expected) in enumerate(cases):
        path = tmp_path / f"r{i}.yaml"
        path.write_text(router_doc(tls={"certFile": cert, "keyFile": key, "sni": sni}))
        with pytest.raises(ConfigError) as err:
            load_config(str(path))
        assert expected in str(err.value), (expected, str(err.value))


async def test_out_of_descriptors_before_the_handshake_closes_the_connection_and_nothing_leaks(
        tls_router, monkeypatch):
    """The first-byte look needs a copy of the connection's descriptor: when the process has none left,
    the connection is closed with nothing sent (as libuv closes what it cannot accept) and counted."""
    app, ca = tls_router
    import router.dataplane.opening as opening

    def no_descriptors(fd):
        raise OSError(24, "Too many open files")
    monkeypatch.setattr(opening.os, "dup", no_descriptors)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    assert await read_until_close(reader, 5) == b""
    writer.close()
    await wait_for(lambda: not app.ctx.openings, what="the opening ended")
    assert app.metrics.registry.get_sample_value(
        "router_rejected_requests_total", {"code": "0", "reason": "local resources exhausted"}) == 1
    monkeypatch.undo()
    reader, writer = await https(app.port, client_context(ca))  # served again once descriptors are back
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.close()


def _fetch_with_session(port: int, ctx: ssl.SSLContext, session):
    """One request over a blocking TLS socket offering `session`: (the new session, whether it was reused)."""
    import socket as socketlib
    with socketlib.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            while tls.recv(65536):  # read to the end: TLS 1.3 session tickets arrive after the handshake
                pass
            return tls.session, tls.session_reused


async def test_a_reload_that_leaves_tls_alone_keeps_sessions_resumable(backends, router, ca, tmp_path):
    """Contexts are rebuilt only when the TLS settings or files change: a reload for a weight keeps the
    session cache and ticket keys, so clients resume instead of paying a full handshake after every reload."""
    (b,) = await backends("a")
    cert, key, _ = write_pair(tmp_path, ca)
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(tls={"certFile": cert, "keyFile": key}))
    ctx = client_context(ca)
    session, _ = await asyncio.to_thread(_fetch_with_session, app.port, ctx, None)
    path = app.config_dir / "router.yaml"
    path.write_text(path.read_text().replace("weight: 1", "weight: 2"))
    assert (await app.reloader.reload("test"))["ok"] and app.config.splits[0].backends[0].weight == 2
    _, reused = await asyncio.to_thread(_fetch_with_session, app.port, ctx, session)
    assert reused and app.state()["tls"]["loads"] == 1
    write_pair(tmp_path, ca)  # a renewal: new contexts, so a full handshake
    assert (await app.reloader.reload("test"))["ok"]
    _, reused = await asyncio.to_thread(_fetch_with_session, app.port, ctx, session)
    assert not reused and app.state()["tls"]["loads"] == 2
