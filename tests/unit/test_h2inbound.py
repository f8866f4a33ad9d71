"""The client's GOAWAY taken out of what h2 reads: whatever the frames and however the bytes are split,
every other byte passes on in order and the GOAWAY's last stream and code are noted."""
from hypothesis import given, strategies as st

from router.dataplane.h2inbound import InboundFrames
from router.dataplane.h2head import PREFACE


def frame(kind: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, 0]) + stream.to_bytes(4, "big") + payload


def goaway(last: int, code: int, debug: bytes = b"") -> bytes:
    return frame(7, 0, last.to_bytes(4, "big") + code.to_bytes(4, "big") + debug)


FRAMES = st.one_of(
    st.builds(lambda s, p: ("keep", frame(0, s, p)), st.integers(1, 99), st.binary(max_size=300)),  # DATA
    st.builds(lambda s, p: ("keep", frame(1, s, p)), st.integers(1, 99), st.binary(max_size=40)),  # HEADERS
    st.builds(lambda p: ("keep", frame(4, 0, p)), st.binary(max_size=12)),  # SETTINGS
    st.builds(lambda p: ("keep", frame(7, 1, p)), st.binary(min_size=8, max_size=12)),  # GOAWAY on a stream: h2's
    st.builds(lambda p: ("keep", frame(7, 0, p)), st.binary(max_size=7)),  # too short: h2's to refuse
    st.builds(lambda last, code, d: ("goaway", goaway(last, code, d), (last, code)),
              st.integers(0, 2 ** 31 - 1), st.integers(0, 13), st.binary(max_size=20)))


@given(st.lists(FRAMES, max_size=12), st.lists(st.integers(1, 40), max_size=30))
def test_other_bytes_pass_in_order_and_the_goaway_is_noted(frames, cuts):
    data = PREFACE + b"".join(f[1] for f in frames)
    expected = PREFACE + b"".join(f[1] for f in frames if f[0] == "keep")
    noted = [f[2] for f in frames if f[0] == "goaway"]
    flt, out, pos = InboundFrames(len(PREFACE)), [], 0
    for cut in cuts:
        out.append(flt.feed(data[pos:pos + cut]))
        pos += cut
    out.append(flt.feed(data[pos:]))
    assert b"".join(out) == expected
    assert flt.goaway == (noted[-1] if noted else None) and flt.held == b""


def test_a_goaway_longer_than_a_frame_may_be_is_left_to_h2():
    flt = InboundFrames()
    huge = frame(7, 0, b"\0" * 20000)
    assert flt.feed(huge[:100]) == huge[:100] and flt.goaway is None and flt.held == b""  # not held in memory


def test_frames_that_carry_nothing_are_counted():
    flt = InboundFrames()
    data = (frame(0, 1, b"") + frame(0, 1, b"x") + frame(0, 1, b"")  # empty, not, empty: runs of one
            + bytes([0, 0, 0, 0, 1, 0, 0, 0, 1])  # an empty DATA that ends its stream: not empty-handed
            + frame(2, 1, b"\0" * 5) * 3 + frame(8, 0, b"\0\0\0\1") * 2
            + frame(9, 1, b"") + frame(1, 3, b""))  # an empty CONTINUATION then an empty HEADERS: a run of two
    assert flt.feed(data) == data
    assert (flt.most_empty, flt.priority, flt.window_updates) == (2, 3, 2)
