"""TLS on the client listener: the server contexts, certificates chosen by SNI, client certificates,
and all of it replaced while serving.

The contexts are built from the config at start and on every reload (or change of a certificate or
CA file: a Kubernetes Secret update, cert-manager's renewal), aside from the live ones, and swapped
in whole: new handshakes get them, open connections keep theirs, and a pair or CA file that does
not load leaves the live ones serving. The default context's SNI callback hands a handshake to the
context its name picks (Router tls.sni); every context has the same versions and client checks.
"""
from __future__ import annotations

import base64
import calendar
import hashlib
import logging
import os
import re
import ssl
import time
import urllib.parse

from ..config.model import ClientCertificates, Tls
from .h2head import ALPN
from ..config.values import refuse_passphrase

log = logging.getLogger("router.tls")

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(cert_file: str, key_file: str, min_version: str = "1.2",
                   clients: ClientCertificates | None = None, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """TLS 1.2 (or `min_version`) and up, the ssl module's server defaults (no compression, forward-secret
    ciphers first), HTTP/1.1 (and with `alpn`, HTTP/2 first) offered by ALPN so clients speak what the router
    serves; with `clients`,
    client certificates asked for (required, or checked when given) and verified against its CAs."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = _VERSIONS[min_version]
    ctx.set_alpn_protocols(list(alpn))
    ctx.load_cert_chain(cert_file, key_file, refuse_passphrase)
    if clients is not None:
        ctx.load_verify_locations(cafile=clients.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if clients.required else ssl.CERT_OPTIONAL
    return ctx


class ListenerTls:
    """The client listener's TLS: the live default context (`context`, read at each handshake), the
    SNI contexts by host name, and what /debug/state and the expiry gauge show of them."""

    def __init__(self, tls: Tls, expiry_gauge, http2: bool = False):
        self.alpn = (ALPN, "http/1.1") if http2 else ("http/1.1",)  # (fixed at start, as the listener is)
        self.context: ssl.SSLContext | None = None
        self.exact: dict[str, ssl.SSLContext] = {}
        self.suffixes: dict[str, ssl.SSLContext] = {}  # ".example.com" for "*.example.com"
        self.expiry_gauge = expiry_gauge
        self.loads = 0
        self.last_error: str | None = None
        self.served: list[dict] = []
        self.settings = tls
        self.signature = _signature(tls)
        self._install(tls)

    def reload(self, tls: Tls) -> None:
        """New handshakes get the certificates as the files are now; on an error the last ones stay. When
        neither the settings nor the files changed (a reload for a weight), the contexts stay, and with
        them their session caches and ticket keys: clients keep resuming their sessions."""
        signature = _signature(tls)
        if signature == self.signature and self.last_error is None:
            return
        try:
            self._install(tls)
            self.signature = signature
        except (ssl.SSLError, OSError, ValueError) as exc:  # changed since validation: keep the last ones
            self.last_error = str(exc)
            log.error("TLS certificates not replaced, keeping the last ones: %s", exc)

    def _install(self, tls: Tls) -> None:
        def build(cert_file: str, key_file: str) -> ssl.SSLContext:
            return server_context(cert_file, key_file, tls.min_version, tls.client_certificates, self.alpn)

        default = build(tls.cert_file, tls.key_file)  # all built aside, swapped in whole below
        default.sni_callback = self._pick
        exact, suffixes = {}, {}
        for entry in tls.sni:
            ctx = build(entry.cert_file, entry.key_file)
            for host in entry.hosts:
                if host.startswith("*."):
                    suffixes[host[1:]] = ctx
                else:
                    exact[host] = ctx
        self.context, self.exact, self.suffixes, self.settings = default, exact, suffixes, tls
        self.loads += 1
        self.last_error = None
        self.served = [{"hosts": ["*"], "cert_file": tls.cert_file, "key_file": tls.key_file}] + [
            {"hosts": list(e.hosts), "cert_file": e.cert_file, "key_file": e.key_file} for e in tls.sni]
        self._note_expiry()

    def _pick(self, ssl_object, server_name: str | None, _default) -> None:
        """SNI callback: the exact name's certificate, else the longest wildcard's, else the default."""
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is None:
            dot = name.find(".")
            while dot != -1 and ctx is None:
                ctx = self.suffixes.get(name[dot:])
                dot = name.find(".", dot + 1)
        if ctx is not None:
            ssl_object.context = ctx
        return None

    def _note_expiry(self) -> None:
        """Each certificate's expiry in the state; the soonest in the gauge; a warning for any that has passed."""
        soonest = None
        for cert in self.served:
            not_after = certificate_not_after(cert["cert_file"])
            cert["not_after"] = utc_text(not_after)
            if not_after is None:
                continue
            soonest = not_after if soonest is None else min(soonest, not_after)
            if not_after <= time.time():
                log.warning("TLS certificate %s expired at %s: clients will refuse it", cert["cert_file"],
                            cert["not_after"])
        if soonest is not None:
            self.expiry_gauge.set(soonest)

    def state(self) -> dict:
        """What /debug/state shows: the default pair (as before), every certificate, loads, the last error."""
        default, clients = self.served[0], self.settings.client_certificates
        return {"cert_file": default["cert_file"], "key_file": default["key_file"], "not_after": default["not_after"],
                "certificates": self.served, "min_version": self.settings.min_version,
                "client_certificates": {"ca_file": clients.ca_file, "required": clients.required,
                                        "forward_cert": clients.forward_cert} if clients else None,
                "loads": self.loads, "last_error": self.last_error}


def client_certificate_element(ssl_object, with_cert: bool = False) -> bytes:
    """What X-Forwarded-Client-Cert says of the certificate a client showed on this connection (Envoy's
    format: Hash=<SHA-256 of the DER, hex>;Cert="<PEM, URL-encoded>" (`with_cert`);Subject="<RFC 2253>";
    URI=...;DNS=...), or b"" when it showed none. Read once per connection: the handshake verified it
    against the client CAs."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return b""
    info = ssl_object.getpeercert() or {}
    parts = ["Hash=" + hashlib.sha256(der).hexdigest()]
    if with_cert:
        parts.append('Cert="' + urllib.parse.quote(ssl.DER_cert_to_PEM_cert(der), safe="") + '"')
    parts.append("Subject=" + _quoted(rfc2253(info.get("subject", ()))))
    uris = [value for kind, value in info.get("subjectAltName", ()) if kind == "URI"]
    if uris:
        parts.append("URI=" + _quoted(uris[0]))
    parts += ["DNS=" + _quoted(value) for kind, value in info.get("subjectAltName", ()) if kind == "DNS"]
    return ";".join(parts).encode("utf-8")


_SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
                "localityName": "L", "stateOrProvinceName": "ST", "streetAddress": "STREET",
                "domainComponent": "DC", "userId": "UID"}


def rfc2253(subject: tuple) -> str:
    """A subject as the ssl module gives it (RDNs, each a tuple of (name, value) pairs), written the RFC
    2253 way: the last RDN first, short attribute names, special characters escaped."""
    def escape(value: str) -> str:
        out = "".join("\\" + c if c in ',+"\\<>;' else c for c in value)
        if out[:1] in ("#", " "):
            out = "\\" + out
        return out[:-1] + "\\ " if out.endswith(" ") and not out.endswith("\\ ") else out
    return ",".join("+".join(f"{_SHORT_NAMES.get(name, name)}={escape(value)}" for name, value in rdn)
                    for rdn in reversed(subject))


def _quoted(value: str) -> str:
    """A value of an X-Forwarded-Client-Cert element: control characters dropped (never a header line
    break), quoted when it holds , ; = or a quote, with quotes and backslashes escaped."""
    value = "".join(c for c in value if c >= " " and c != "\x7f")
    if any(c in value for c in ',;="\\'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def _signature(tls: Tls) -> tuple:
    """The settings and what each file is now (a Secret update swaps a symlink: a new inode)."""
    stats = []
    for path in tls.files:
        try:
            st = os.stat(path)
            stats.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            stats.append(None)
    return tls, tuple(stats)


def utc_text(when: float | None) -> str | None:
    """A time in seconds since the epoch as /debug/state shows it (2026-12-04T13:50:50Z); None stays None."""
    return None if when is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def certificate_not_after(cert_file: str) -> float | None:
    """When the first certificate in `cert_file` (the served one; a chain follows it) expires, in
    seconds since the epoch; None when the file holds no certificate this can read. The ssl module
    does not show a loaded certificate, so the DER is read here: Certificate, tbsCertificate, an
    optional version, serialNumber, signature, issuer, then validity's notBefore and notAfter."""
    try:
        with open(cert_file, "rb") as fh:
            found = _PEM_CERT.search(fh.read(1 << 20))
        if found is None:
            return None
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
        _, pos, _ = _element(der, 0)  # Certificate: into it
        _, pos, _ = _element(der, pos)  # tbsCertificate: into it
        tag, _, after = _element(der, pos)
        if tag == 0xA0:  # [0] version
            pos = after
        for _ in range(3):  # serialNumber, signature, issuer
            pos = _element(der, pos)[2]
        _, pos, _ = _element(der, pos)  # validity: into it
        pos = _element(der, pos)[2]  # past notBefore
        tag, start, end = _element(der, pos)
        return _asn1_time(tag, der[start:end].decode("ascii"))
    except (OSError, ValueError, IndexError):
        return None


def _element(der: bytes, pos: int) -> tuple[int, int, int]:
    """The DER element at `pos`: (tag, where its contents start, where the next element starts)."""
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if not 1 <= n <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[pos:pos + n], "big")
        pos += n
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _asn1_time(tag: int, text: str) -> float:
    """UTCTime (YYMMDDHHMMSSZ; YY below 50 is 20YY, as RFC 5280 says) or GeneralizedTime (YYYYMMDDHHMMSSZ)."""
    if tag == _UTC_TIME and len(text) == 13:
        yy = int(text[:2])
        text = str(2000 + yy if yy < 50 else 1900 + yy) + text[2:]
    elif tag != _GENERALIZED_TIME or len(text) != 15:
        raise ValueError("not an RFC 5280 time")
    return float(calendar.timegm(time.strptime(text, "%Y%m%d%H%M%SZ")))
