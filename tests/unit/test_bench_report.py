"""bench/proxy's report helpers: the ratios it prints come from the measured runs, and the
interpreter it is pointed at is checked before anything starts."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("bench_proxy", os.path.join(ROOT, "bench", "proxy.py"))
bench_proxy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_proxy)


def _case(rps, p50=0.5, rounds=None):
    return {"rps": rps, "p50_ms": p50, "p99_ms": 2 * p50, "rounds_rps": rounds or [rps]}


def test_report_ratios_come_from_the_runs():
    results = {name: {"c64_64B": _case(rps, rounds=rounds), "c1_64B": _case(rps / 10, p50=p50),
                      "c64_1MiB": _case(rps / 100)}
               for name, rps, rounds, p50 in (("direct", 90000, None, 0.1), ("nginx", 40000, [38000, 42000], 0.15),
                                             ("haproxy", 50000, [50000, 50000], 0.14),
                                             ("router", 20000, [19000, 21000], 0.3),
                                             ("python_floor", 32000, [30000, 35000], 0.2))}
    report = bench_proxy.build_report(results, {n: 10.0 for n in results})
    assert report["ratios"]["router_vs_nginx"] == 0.5
    assert report["ratios"]["router_vs_haproxy"] == 0.4
    assert report["ratios"]["router_vs_python_floor"] == 0.625
    assert report["ratios"]["router_1MiB_vs_nginx"] == 0.5
    assert report["ratios_per_round"]["router_vs_nginx"] == [0.5, 0.5]
    assert report["ratios_per_round"]["router_vs_python_floor"] == [0.633, 0.6]
    assert report["added_p50_ms_at_1_connection"]["router"] == 0.2


def test_interpreter_is_described():
    info = bench_proxy.describe_interpreter(sys.executable)
    assert info["version"] == sys.version.split()[0]
    assert os.path.samefile(info["executable"], sys.executable)
    assert "configure_args" in info


def test_interpreter_that_cannot_run_the_router_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="cannot import the router"):
        bench_proxy.describe_interpreter(_python_without_router(tmp_path))
    with pytest.raises(SystemExit, match="No such file"):
        bench_proxy.describe_interpreter(str(tmp_path / "no-such-python"))


def _python_without_router(tmp_path) -> str:
    """A wrapper that runs this interpreter isolated from site-packages, so `import router` fails."""
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -I -S \"$@\"\n")
    script.chmod(0o755)
    return str(script)


def test_second_router_is_compared_in_the_same_rounds():
    results = {name: {"c64_64B": _case(rps, rounds=[rps, rps * 1.1]), "c1_64B": _case(rps / 10),
                      "c64_1MiB": _case(rps / 100)}
               for name, rps in (("direct", 90000), ("nginx", 40000), ("haproxy", 50000), ("router", 20000),
                                 ("python_floor", 32000), ("router_alt", 26000))}
    report = bench_proxy.build_report(results, {n: 10.0 for n in results})
    assert report["ratios"]["router_alt_vs_nginx"] == 0.65
    assert report["ratios"]["router_alt_vs_router"] == 1.3
    assert report["ratios_per_round"]["router_alt_vs_router"] == [1.3, 1.3]
    assert "router_alt" in report["added_p50_ms_at_1_connection"]
    assert "router_alt" in report["targets"]


def _process_tree(script: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", script], start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def test_nginx_is_measured_on_its_worker_not_its_master():
    # A stand-in master that starts its worker late, beside a helper child that is not a worker.
    master = _process_tree('sleep 30 & sleep 0.3; (exec -a "nginx: worker process" sleep 30) & wait')
    try:
        pid = bench_proxy.nginx_worker_pid(master)
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            assert fh.read().startswith(b"nginx: worker process")
        assert pid != master.pid
    finally:
        _stop(master)


def test_nginx_without_a_worker_is_an_error_not_a_zero():
    master = _process_tree("sleep 30 & wait")
    try:
        with pytest.raises(SystemExit, match="no worker process"):
            bench_proxy.nginx_worker_pid(master, timeout_s=0.5)
    finally:
        _stop(master)
    exited = _process_tree("exit 3")
    exited.wait(10)
    with pytest.raises(SystemExit, match="exited with 3"):
        bench_proxy.nginx_worker_pid(exited, timeout_s=5)


def test_failed_requests_are_reported_not_counted_as_throughput():
    ok = {"rps": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0, "non2xx": 0, "socket_errors": ""}
    bad = dict(ok, rps=5000.0, non2xx=4000)
    cut = dict(ok, rps=900.0, socket_errors="connect 0, read 12, write 0, timeout 0")
    median = bench_proxy.median_run([ok, bad, cut])
    assert median["rps"] == 1000.0
    assert median["failures"] == ["4000 non-2xx responses", "socket errors: connect 0, read 12, write 0, timeout 0"]
    results = {name: {"c64_64B": _case(rps), "c1_64B": _case(rps / 10), "c64_1MiB": _case(rps / 100)}
               for name, rps in (("direct", 90000), ("nginx", 40000), ("haproxy", 50000), ("router", 20000),
                                 ("python_floor", 32000))}
    assert "failures" not in bench_proxy.build_report(results, {n: 1.0 for n in results})
    results["router"]["c64_64B"] = median
    report = bench_proxy.build_report(results, {n: 1.0 for n in results})
    assert report["failures"] == {"router c64_64B": median["failures"]}
