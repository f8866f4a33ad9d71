"""Every shipped drill, in its short form, against the lab: each must pass its criteria."""
import glob
import json
import os
import subprocess
import sys

import pytest

DRILLS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "chaos", "drills", "*.yaml")))


def test_the_issue_list_of_drills_is_shipped():
    names = {os.path.splitext(os.path.basename(p))[0] for p in DRILLS}
    assert names == {"region-blackhole", "connection-resets", "latency-spike", "truncated-upstream", "cold-start-burst",
                     "region-evacuation", "router-restart", "kube-api-outage", "mass-failure", "region-return"}


@pytest.mark.parametrize("path", DRILLS, ids=lambda p: os.path.splitext(os.path.basename(p))[0])
def test_drill_passes_in_short_form(path, tmp_path):
    out = subprocess.run([sys.executable, "-m", "router", "chaos", "run", path, "--short", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=90)
    print(out.stdout)  # the measured figures, shown with -s or on failure
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"] == "pass"
    assert report["sent"] > 100 and report["lost"] == 0
    assert all(c["pass"] for c in report["criteria"]) and len(report["criteria"]) >= 7  # hypothesis + criteria
    assert report["duration_s"] < 30
    assert (tmp_path / "report.html").exists()
