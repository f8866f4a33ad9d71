"""Path normalization: the path routed on is the path forwarded, with no dot or empty segments."""
from hypothesis import given, settings, strategies as st

from router.dataplane.paths import needs_normalizing, normalize, replace_path, replace_prefix, unescape_slashes

SEGMENTS = st.sampled_from(["", ".", "..", "%2e", "%2E%2e", ".%2e", "a", "b", "...", ".x", "..%2F", "%2F", "%20",
                            "%41", "é".encode().decode("latin-1")])
TARGETS = st.builds(lambda segs, query: ("/" + "/".join(segs) + query).encode("latin-1"),
                    st.lists(SEGMENTS, max_size=8), st.sampled_from(["", "?", "?q=/../x", "?a=1&b=//"]))


def test_examples():
    assert normalize(b"/a/b/../c/./d") == b"/a/c/d"
    assert normalize(b"/a/%2e%2E/b?x=/../y") == b"/b?x=/../y"
    assert normalize(b"//a///b/") == b"/a/b/"
    assert normalize(b"/../../a") == b"/a"
    assert normalize(b"/a/..") == b"/"
    assert normalize(b"/a/..%2Fb") == b"/a/..%2Fb"


@settings(max_examples=500)
@given(TARGETS)
def test_normalized_paths_have_no_dot_or_empty_segments_and_keep_the_query(url):
    out = normalize(url)
    path, _, query = out.partition(b"?")
    segments = path.split(b"/")[1:]
    assert path.startswith(b"/") and b"//" not in path
    for seg in segments:
        assert seg.replace(b"%2e", b".").replace(b"%2E", b".") not in (b".", b"..")
    assert query == url.partition(b"?")[2]
    assert normalize(out) == out  # idempotent


@settings(max_examples=500)
@given(TARGETS)
def test_the_hot_path_precheck_never_skips_a_path_that_would_change(url):
    if not needs_normalizing(url):
        assert normalize(url) == url


def test_prefix_and_full_path_replacement_keep_the_query():
    assert replace_prefix(b"/shop/cart?x=1", "/shop", b"/") == b"/cart?x=1"
    assert replace_prefix(b"/shop", "/shop", b"/") == b"/"
    assert replace_prefix(b"/shop?x", "/shop", b"/") == b"/?x"
    assert replace_prefix(b"/shop/cart", "/shop", b"/v2/shop") == b"/v2/shop/cart"
    assert replace_prefix(b"/shop/cart", "/shop/", b"/xyz/") == b"/xyz/cart"
    assert replace_prefix(b"/x", "/", b"/api") == b"/api/x"
    assert replace_path(b"/a/b?q=1", b"/new") == b"/new?q=1" and replace_path(b"/a", b"/new") == b"/new"


def test_escaped_slashes_are_decoded_in_the_path_only():
    assert unescape_slashes(b"/a%2Fb%2f..%5Cc?x=%2F") == b"/a/b/..\\c?x=%2F"
    assert unescape_slashes(b"/a/b?x=%2F") is None and unescape_slashes(b"/%41") is None
    assert normalize(unescape_slashes(b"/public/..%2Fadmin")) == b"/admin"
