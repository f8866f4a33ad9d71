"""The drill runner's failure paths: an abort condition stops the run and fails it; a bad file exits 2."""
import json
import subprocess
import sys

ABORTING = """\
name: aborting
load: {rate: 40, duration: 12s, services: {checkout: 1}}
faults: [{at: 2s, duration: 8s, type: kill_cluster, cluster: all}]
abort: {successRatioBelow: 0.5, window: 1s}
criteria: [{metric: lost, max: 0}]
"""


def test_abort_condition_stops_the_drill_and_exits_1(tmp_path):
    drill = tmp_path / "aborting.yaml"
    drill.write_text(ABORTING)
    out = subprocess.run([sys.executable, "-m", "router", "chaos", "run", str(drill), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == "aborted" and "success ratio under 0.5" in report["aborted"]
    assert report["duration_s"] < 8  # stopped early, not at 12 s
    assert "ABORTED" in out.stdout


def test_bad_drill_file_exits_2_naming_the_field(tmp_path):
    drill = tmp_path / "bad.yaml"
    drill.write_text("name: bad\nfaults: [{at: 1s, type: earthquake}]\n")
    out = subprocess.run([sys.executable, "-m", "router", "chaos", "run", str(drill)], capture_output=True, text=True,
                         timeout=30, cwd=tmp_path)
    assert out.returncode == 2 and "bad.yaml: faults[0]: type: 'earthquake' is not a fault" in out.stdout
