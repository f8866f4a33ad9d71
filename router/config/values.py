"""Scalar parsers shared by the loaders: durations, weights, quantities, selectors, URLs.

Each returns the parsed value or raises ValueError with a message fit for an operator.
"""
from __future__ import annotations

import ipaddress
import math
import re
import ssl
from urllib.parse import urlsplit

from .model import Endpoint

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION_S = (2**63 - 1) / 1e9  # Go's longest duration, about 292 years (2562047h)


def parse_duration(value: object) -> float:
    """Go-style duration ("200ms", "1.5s", "1m30s") to seconds. Bare 0 is allowed."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 200ms or 1.5s, got {value!r}")
    if isinstance(value, (int, float)) and value == 0:
        return 0.0
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a duration like 200ms or 1.5s, got {value!r}")
    pos, total = 0, 0.0
    while pos < len(value):
        m = _DURATION_PART.match(value, pos)
        if not m:
            raise ValueError(f"bad duration {value!r}: expected a duration like 200ms or 1.5s")
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if total > MAX_DURATION_S:
        raise ValueError(f"duration {value!r} is too long (at most 2562047h)")
    return round(total, 9)  # nanoseconds, as Go keeps them


def parse_weight(value: object) -> float:
    """A plain non-negative finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"weight must be a number, got {value!r}")
    return _finite_non_negative(value, "weight")


def _finite_non_negative(value: int | float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return float(value)


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|Ki|Mi|Gi)?$")
_SUFFIX = {None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024.0, "Mi": 1024.0**2, "Gi": 1024.0**3}


def parse_quantity(value: object, what: str = "weight", example: str = "100m or 1") -> float:
    """Kubernetes Quantity ("100m", "1", "2k") as used by SMI v1alpha1 weights; `what` and
    `example` word the error for other uses."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what} must be a quantity like {example}, got {value!r}")
    if isinstance(value, (int, float)):
        return _finite_non_negative(value, what)
    m = _QUANTITY.match(value.strip())
    if not m:
        if value.strip().startswith("-"):
            raise ValueError(f"{what} must not be negative, got {value!r}")
        raise ValueError(f"{what} must be a quantity like {example}, got {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def parse_size(value: object) -> int:
    """Byte sizes: 1024, "64Ki", "10Mi"."""
    q = parse_quantity(value, "size", "1024, 64Ki or 10Mi")
    if q != int(q):
        raise ValueError(f"size must be a whole number of bytes, got {value!r}")
    return int(q)


def parse_positive_size(value: object) -> int:
    """A byte size of at least one byte (a limit of 0 would refuse every request)."""
    size = parse_size(value)
    if size < 1:
        raise ValueError(f"size must be at least 1 byte, got {value!r}")
    return size


_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")


def parse_selector(value: object) -> tuple[tuple[str, str], ...]:
    """`key=value[,key=value]` (Kubernetes equality selector)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"selector must be key=value[,key=value], got {value!r}")
    pairs = []
    for part in value.split(","):
        key, sep, val = part.strip().partition("=")
        key, val = key.strip(), val.strip()
        if val.startswith("="):  # tolerate the `==` spelling Kubernetes also accepts
            val = val[1:].strip()
        if not sep or not _LABEL.match(key) or (val and not _LABEL.match(val)):
            raise ValueError(f"selector must be key=value[,key=value], got {value!r}")
        pairs.append((key, val))
    return tuple(pairs)


def parse_endpoint(value: object) -> Endpoint:
    if not isinstance(value, str):
        raise ValueError(f"endpoint must be a URL like http://host:port, got {value!r}")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"endpoint is not a URL: {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"endpoint is not an http(s) URL: {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"endpoint must be scheme://host[:port] only, got {value!r}")
    return Endpoint(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))


def parse_hostport(value: object) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def normalise_host(value: object) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in " /\t"):
        raise ValueError(f"host must be a DNS name such as api.example.com or *.example.com, got {value!r}")
    return value.lower().rstrip(".")


def check_tls_pair(cert_file: str, key_file: str) -> tuple[str, str] | None:
    """None when the pair loads, else (which field is at fault, "certFile" or "keyFile", message)."""
    for field, path, marker, what in (("certFile", cert_file, b"-----BEGIN CERTIFICATE-----", "certificate"),
                                      ("keyFile", key_file, b"PRIVATE KEY-----", "private key")):
        try:
            with open(path, "rb") as fh:
                head = fh.read(1 << 20)
        except OSError as exc:
            return field, f"cannot read {path}: {exc.strerror}"
        if marker not in head:
            return field, f"no PEM {what} in {path}"
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file, refuse_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return "keyFile", f"the private key does not match the certificate in {cert_file}"
        return "certFile", f"cannot load the certificate chain and key: {exc.reason or exc}"
    except ValueError as exc:  # an encrypted key
        return "keyFile", str(exc)
    except OSError as exc:
        return "certFile", f"cannot load the certificate chain and key: {exc}"
    return None


_DNS_NAME = re.compile(r"(?=.{1,253}\.?$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?",
                       re.IGNORECASE)


def parse_server_name(value: object) -> str:
    """A TLS server name (SNI, and the name the certificate must carry): a DNS name or an IP address."""
    if isinstance(value, str) and _DNS_NAME.fullmatch(value):
        return value.rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise ValueError(f"expected a DNS name such as ingress.example.com, got {value!r}") from None


def check_ca_file(ca_file: str) -> str | None:
    """None when `ca_file` is a PEM bundle whose certificates load, else what is wrong with it."""
    return load_ca_file(ca_file)[1]


def load_ca_file(ca_file: str | None) -> tuple[ssl.SSLContext | None, str | None]:
    """A client context trusting the CAs in `ca_file` (the system's when None), or (None, what is wrong)."""
    if ca_file is not None:
        try:
            with open(ca_file, "rb") as fh:
                if b"-----BEGIN CERTIFICATE-----" not in fh.read(1 << 22):
                    return None, f"no PEM certificate in {ca_file}"
        except OSError as exc:
            return None, f"cannot read {ca_file}: {exc.strerror}"
    try:
        return ssl.create_default_context(cafile=ca_file), None
    except ssl.SSLError as exc:
        return None, f"cannot load the CA certificates in {ca_file}: {exc.reason or exc}"


def parse_tls_version(value: object) -> str:
    """The lowest TLS version the listener accepts: "1.2" or "1.3"."""
    if value in ("1.2", "1.3"):
        return value
    raise ValueError(f'expected "1.2" or "1.3" (TLS versions before 1.2 are not offered), got {value!r}')


def upstream_context(ca_file: str | None, cert_file: str | None,
                     key_file: str | None) -> tuple[ssl.SSLContext | None, tuple[str, str] | None]:
    """The client context for a cluster's TLS settings, or (None, (field at fault, message)).
    Verification is always on: `ca_file` replaces the system's CAs, it does not turn checks off."""
    context, problem = load_ca_file(ca_file)
    if problem is not None:
        return None, ("caFile", problem)
    if cert_file is not None:
        problem = check_tls_pair(cert_file, key_file)
        if problem is not None:
            return None, problem
        context.load_cert_chain(cert_file, key_file, refuse_passphrase)
    return context, None


def refuse_passphrase() -> bytes:
    """Asked for when the key is encrypted: refuse (OpenSSL would otherwise prompt on the terminal)."""
    raise ValueError("the private key is encrypted; give an unencrypted key (a Kubernetes TLS Secret holds one)")
