"""Request path normalization: the path a request is routed on is the path the cluster receives.

A split scoped by `pathPrefix` routes on the request path. A client sending `/public/../admin`
or `/public/%2e%2e/admin` matches a `/public` split, while most servers resolve those dot
segments and serve `/admin`: the cluster chosen and the resource served would disagree (a path
confusion). So, as Envoy's edge guidance recommends (normalize_path and merge_slashes), dot
segments are removed (RFC 3986 5.2.4, `%2e` counted as a dot) and runs of slashes merged, before
routing, and the normalized path is what is forwarded. Other percent-encodings (`%2F` among them)
and the query are left exactly as received.

Also here: a route's path rewrite (prefix or whole path replaced, with its Host) and the decoding of escaped
slashes that Router escapedSlashes: unescape asks for.
"""
from __future__ import annotations


def needs_normalizing(url: bytes) -> bool:
    """Cheap test on the hot path: can `url` hold a dot segment or an empty segment? Every dot
    segment begins with "." or "%2e" right after a slash. (May say yes for a query; harmless.)"""
    return b"/." in url or b"//" in url or b"/%2" in url


def normalize(url: bytes) -> bytes:
    """An origin-form target with the path's dot segments removed and repeated slashes merged;
    a trailing slash stays (`/a/b/..` is `/a/`), and `..` never climbs above the root (`/../a`
    is `/a`, as RFC 3986 resolves it)."""
    path, sep, query = url.partition(b"?")
    out: list[bytes] = []
    trailing = False
    for seg in path.split(b"/")[1:]:
        dot = seg.replace(b"%2e", b".").replace(b"%2E", b".") if b"%" in seg else seg
        if dot == b"..":
            if out:
                out.pop()
            trailing = True
        elif dot == b"." or not seg:
            trailing = True
        else:
            out.append(seg)
            trailing = False
    new = b"/" + b"/".join(out) + (b"/" if trailing and out else b"")
    return new + sep + query


def replace_prefix(url: bytes, prefix: str, replacement: bytes) -> bytes:
    """`url`'s path with the route's `prefix` (which it matched, segment-wise) replaced: /shop/cart
    under /shop with "/" is /cart, with /v2/shop /v2/shop/cart; /shop alone becomes the replacement."""
    rest = url[len(prefix.rstrip("/")):]  # "", "/...", or "?query"
    base = replacement.rstrip(b"/")
    if not rest.startswith(b"/"):
        return (base or b"/") + rest
    return base + rest


def replace_path(url: bytes, path: bytes) -> bytes:
    """`url` with its whole path replaced, the query kept."""
    _, sep, query = url.partition(b"?")
    return path + sep + query


def replaced(url: bytes, route_prefix: str, prefix: bytes | None, full: bytes | None) -> bytes:
    """`url` with the route's prefix replaced by `prefix`, or its whole path by `full` (at most one is
    set; the query is kept); as it is when neither is, or when the target is not a path (OPTIONS *)."""
    if url[:1] != b"/":
        return url
    if full is not None:
        return replace_path(url, full)
    if prefix is not None:
        return replace_prefix(url, route_prefix, prefix)
    return url


def unescape_slashes(url: bytes) -> bytes | None:
    """`url` with `%2F` and `%5C` in its path decoded to "/" and "\\", or None when the path has none."""
    path, sep, query = url.partition(b"?")
    low = path.lower()
    if b"%2f" not in low and b"%5c" not in low:
        return None
    for enc, dec in ((b"%2f", b"/"), (b"%5c", b"\\")):
        i = low.find(enc)
        while i >= 0:
            path, low = path[:i] + dec + path[i + 3:], low[:i] + dec + low[i + 3:]
            i = low.find(enc, i + 1)
    return path + sep + query


def rewritten(url: bytes, headers: list, route) -> tuple[bytes, list]:
    """The target and headers sent to the cluster under the route's URL rewrite (the client's path
    and Host stay what routing, X-Forwarded-Host and the access log see)."""
    prefix, path, host = route.rewrite
    url = replaced(url, route.path_prefix, prefix, path)
    if host is not None:  # (also for an HTTP/1.0 request that came without Host)
        headers = [(n, v) for n, v in headers if n.lower() != b"host"] + [(b"Host", host)]
    return url, headers
