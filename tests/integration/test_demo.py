"""`edge-router demo` runs end to end and reports the split it observed."""
import re
import subprocess
import sys


def test_demo_prints_observed_split_and_survives_a_region_loss():
    out = subprocess.run([sys.executable, "-m", "router", "demo", "--requests", "600"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all regions healthy: 300 requests, 0 failed" in out.stdout
    assert "ap-east down: 300 requests, 0 failed" in out.stdout
    observed = dict(re.findall(r"^\s+(us-west|eu-central|ap-east)\s+[\d.]+%\s+([\d.]+)%", out.stdout, re.M))
    assert observed  # the table is printed
    last_ap_east = re.findall(r"^\s+ap-east\s+([\d.]+)%\s+([\d.]+)%", out.stdout, re.M)[-1]
    assert last_ap_east == ("0.0", "0.0")
