"""`edge-router demo`: the lab and the router end to end, the report drawn by a real browser,
and Ctrl-C leaving nothing behind."""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def leftovers(marker: str) -> list[str]:
    """Processes whose command line mentions `marker` (the demo's work directory prefix)."""
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and str(os.getpid()) not in path:
            found.append(cmd)
    return found


def test_demo_runs_the_lab_prints_a_summary_and_its_report_is_drawn_in_chromium(tmp_path):
    report = tmp_path / "demo.html"
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "edge-router-demo-*")))
    out = subprocess.run([sys.executable, "-m", "router", "demo", "--duration", "14", "--no-live",
                          "--report", str(report)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    m = re.search(r"edge-router demo: (\d+) requests in \d+s, (\d+) failed, (\d+) lost", text)
    assert m and int(m.group(1)) > 300 and m.group(2) == "0" and m.group(3) == "0", text
    waited, avoided = (int(x) for x in re.search(r"cold starts: (\d+) requests waited on one, (\d+) were sent", text).groups())
    assert waited > 0 and avoided > 0  # the burst at a service at zero waited; warm regions were preferred
    observed = dict(re.findall(r"^\s+(us-west|eu-central|ap-east)\s+[\d.]+%\s+([\d.]+)%", text, re.M))
    assert set(observed) == {"us-west", "eu-central", "ap-east"}
    assert "fault blackhole on ap-east" in text
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "edge-router-demo-*"))) == before  # cleaned up

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
    profile = tmp_path / "profile"
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=90).stdout
    drawn = re.search(r'<svg id="timeline"[^>]*data-drawn="(\d+)"', dom)
    assert drawn, dom[:2000]
    assert int(drawn.group(1)) == 6  # three clusters, failures, p50 and p99
    paths = re.findall(r'<path d="M[\d.]+,[\d.]+ L', dom)
    assert len(paths) == 6  # each series has points
    assert 'class="fault"' in dom and "blackhole@ap-east" in dom  # the fault window is shaded and labelled


def test_ctrl_c_stops_the_demo_and_leaves_no_process_behind(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "router", "demo", "--duration", "120", "--no-live",
                             "--report", str(tmp_path / "r.html")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "router on 127.0.0.1" in line or not line:
                break
        assert "router on 127.0.0.1" in lines[-1], "".join(lines)
        port = int(re.search(r"router on 127.0.0.1:(\d+)", lines[-1]).group(1))
        assert leftovers("edge-router-demo-")  # the router process is running
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        rest, _ = proc.communicate(timeout=40)
        assert proc.returncode in (0, 1, 130), rest
        deadline = time.monotonic() + 10
        while leftovers("edge-router-demo-") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leftovers("edge-router-demo-") == []
        import socket
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
