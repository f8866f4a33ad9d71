"""Drill files, fault specs, lab files and the verdict arithmetic (pure parts of chaos/)."""
import pytest

from chaos import faults
from chaos.drill import DrillError, load_drill
from chaos.lab.config import LabConfigError, lab_from_dict, load_lab
from chaos.load import Outcome, summarise, timeline
from chaos.verdict import Record, judge, measure, steady_state


def ok(t, cluster, dur=0.05, method="GET", rid=None):
    o = Outcome(rid or f"r{t}", t, "checkout", method, dur=dur, status=200, kind="ok", cluster=cluster)
    return o


def failed(t, kind="error", status=502, method="GET"):
    return Outcome(f"f{t}", t, "checkout", method, dur=0.01, status=status, kind=kind)


def test_default_lab_reads_distances_from_the_rtt_matrix():
    lab = load_lab()
    rtt = {c.name: c.rtt_ms for c in lab.clusters}
    assert rtt == {"us-west": 1.0, "eu-central": 123.0, "ap-east": 143.0}  # Dallas -> Dallas, Frankfurt, Tokyo
    assert lab.cold_start_cached_s == 1.0 and lab.cold_start_uncached_s == 6.0
    assert dict(next(c for c in lab.clusters if c.name == "ap-east").labels) == {"region": "ap-east", "zone": "ap-east"}


@pytest.mark.parametrize("doc, message", [
    ({"edge": "Atlantis", "clusters": [{"name": "a", "city": "Dallas"}], "services": [{"name": "s"}]}, "edge"),
    ({"clusters": [{"name": "a", "city": "Mars"}], "services": [{"name": "s"}]}, "clusters[0].city"),
    ({"clusters": [{"name": "a", "city": "Tokyo"}], "services": [{"name": "s", "replicas": {"b": 1}}]}, "unknown cluster"),
    ({"clusters": [{"name": "a", "city": "Tokyo"}], "services": [{"name": "s", "handler": "fast"}]}, "services[0].handler"),
    ({"clusters": [], "services": [{"name": "s"}]}, "at least one cluster"),
])
def test_bad_lab_files_name_the_field(doc, message):
    with pytest.raises(LabConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        lab_from_dict(doc, "lab.yaml")


def test_fault_specs_are_checked():
    faults.check({"type": "latency", "cluster": "ap-east", "latency": "300ms", "jitter": "10ms"}, ["ap-east"])
    with pytest.raises(faults.FaultError, match="not a fault"):
        faults.check({"type": "meteor"})
    with pytest.raises(faults.FaultError, match="unknown field"):
        faults.check({"type": "blackhole", "severity": 3})
    with pytest.raises(faults.FaultError, match="not in the lab"):
        faults.check({"type": "blackhole", "cluster": "mars"}, ["ap-east"])
    with pytest.raises(faults.FaultError, match="bytes"):
        faults.check({"type": "limit_data"})
    with pytest.raises(ValueError):
        faults.check({"type": "latency", "latency": "soon"})


def test_drill_errors_name_file_and_field(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("name: d\ncriteria:\n- {metric: vibes, max: 1}\n")
    with pytest.raises(DrillError, match=r"d.yaml: criteria\[0\].metric: 'vibes' is not a metric"):
        load_drill(str(path))
    path.write_text("name: d\nfaults:\n- {at: 1s, type: blackhole, cluster: x, colour: red}\n")
    with pytest.raises(DrillError, match=r"faults\[0\]: blackhole: unknown field"):
        load_drill(str(path))
    path.write_text("name: d\nload: {duration: 10 s}\n")
    with pytest.raises(DrillError, match="load.duration"):
        load_drill(str(path))
    path.write_text("name: d\nretries: 3\n")
    with pytest.raises(DrillError, match="retries: unknown field"):
        load_drill(str(path))


def test_short_form_scales_times_but_not_bounds(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("name: d\nload: {duration: 40s, bursts: [{at: 10s, service: s, count: 5}]}\n"
                    "faults: [{at: 10s, duration: 20s, type: blackhole, cluster: a}]\n"
                    "criteria: [{metric: detection_s, max: 2}]\nshort: {scale: 0.5}\n")
    d = load_drill(str(path)).shortened()
    assert d.duration_s == 20 and d.faults[0]["at_s"] == 5 and d.faults[0]["duration_s"] == 10
    assert d.bursts == [(5.0, "s", 5)] and d.criteria[0]["max"] == 2


def record_with_fault():
    outs = [ok(t / 10, "a") for t in range(0, 50)] + [ok(t / 10, "b") for t in range(0, 200)]
    outs += [ok(t / 10, "a") for t in range(130, 200)]  # a returns at 13.0 s
    outs += [failed(6.0, kind="timeout"), failed(15.5, status=503)]
    rec = Record(outs, end_s=20.0, windows=[{"start": 5.0, "end": 12.0, "fault": {"type": "latency", "cluster": "a"}}],
                 health=[(5.5, "a", True), (6.2, "a", False), (6.3, "a", False)])
    return rec


def test_verdict_metrics_from_a_recorded_run():
    rec = record_with_fault()
    assert measure("detection_s", rec, {"cluster": "a"}) == pytest.approx(1.2)
    assert measure("leave_s", rec, {"cluster": "a"}) == 0.0  # nothing went to a during the fault
    assert measure("return_s", rec, {"cluster": "a"}) == pytest.approx(1.0)
    assert measure("transitions", rec, {"cluster": "a"}) == 1  # absent from 5 s to 13 s: one change
    assert measure("lost", rec, {}) == 1 and measure("failed", rec, {}) == 2
    assert measure("implicit_failures", rec, {}) == 1  # the timeout; the 503 was explicit
    assert measure("recovery_s", rec, {}) == pytest.approx(3.5)
    assert measure("return_share", rec, {"cluster": "a"}) == pytest.approx(1.0)  # half before, half at once after
    ramped = Record([o for o in rec.outcomes if not (o.cluster == "a" and 13.0 < o.t < 15.0 and round(o.t * 10) % 5)],
                    end_s=20.0, windows=rec.windows)
    assert measure("return_share", ramped, {"cluster": "a"}) == pytest.approx((4 / 24) / 0.5)  # 4 of 20 kept
    verdicts = judge(rec, [{"metric": "detection_s", "cluster": "a", "max": 1}, {"metric": "lost", "max": 1}])
    assert [v["pass"] for v in verdicts] == [False, True] and verdicts[0]["name"] == "detection_s[a]"


def test_undetected_fault_fails_rather_than_passing_silently():
    rec = record_with_fault()
    rec.health = [(6.0, "a", True)]
    (v,) = judge(rec, [{"metric": "detection_s", "cluster": "a", "max": 2}])
    assert v["pass"] is False and v["value"] is None


def test_steady_state_and_summary():
    outs = [ok(i / 10, "a", dur=0.1) for i in range(99)] + [failed(5.0, kind="short", status=200)]
    checks = steady_state(outs, {"success_ratio": 0.99, "p99_ms": 200, "truncated": 0}, "before")
    assert [c["pass"] for c in checks] == [True, True, False]  # one short body breaks the hypothesis
    assert steady_state([], {"success_ratio": 0.99, "p99_ms": 200, "truncated": 0}, "after")[0]["pass"] is False
    s = summarise(outs)
    assert s.sent == 100 and s.succeeded == 99 and s.kinds == {"ok": 99, "short": 1}
    tl = timeline(outs, 1.0, ["a", "b"])
    assert sum(tl["clusters"]["a"]) == 99 and sum(tl["failed"]) == 1 and tl["clusters"]["b"] == [0] * len(tl["t"])
