"""HTTP/2 from clients: edge-router against nginx, each serving HTTP/2 with prior knowledge (h2c) on one
core in front of the same HTTP/1.1 backend, side by side in one run (the layout of bench/proxy.py: proxies
pinned to core 0, the backend and the load generator to core 1), with the router's HTTP/1.1 listener under
wrk beside them for what the HTTP/2 layer costs the router per request.

Cases (h2load, from Debian's nghttp2-client, installed when missing): 64 connections with one stream each,
and 4 connections with 16 concurrent streams each; 64-byte responses.

    python bench/http2.py [--duration 5] [--rounds 3] [--out FILE.json]

This is a benchmark, not a test: it prints measured numbers and ratios.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import proxy as base  # noqa: E402

CASES = [("c64_m1", 64, 1), ("c4_m16", 4, 16)]


def ensure_h2load() -> None:
    if shutil.which("h2load") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "nghttp2-client"], check=True, capture_output=True)


def run_h2load(port: int, conns: int, streams: int, duration: int, pid: int | None) -> dict:
    u0, s0 = base.cpu_ticks(pid)
    out = subprocess.run(["taskset", "-c", "1", "h2load", "-t1", f"-c{conns}", f"-m{streams}", f"-D{duration}",
                          f"http://127.0.0.1:{port}/small"], capture_output=True, text=True).stdout
    u1, s1 = base.cpu_ticks(pid)
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored", out)
    if done is None:
        raise SystemExit(f"h2load gave no summary:\n{out}")
    succeeded, failed, errored = int(done.group(4)), int(done.group(5)), int(done.group(6))
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {"rps": round(succeeded / duration, 1),
            "mean_ms": round(float(mean.group(1)) * scale[mean.group(2)], 3) if mean else None,
            "non2xx": sum(int(codes.group(i)) for i in (2, 3, 4)) if codes else succeeded, "failed": failed + errored,
            "user_us": round((u1 - u0) * tick_us / max(succeeded, 1), 1) if pid else None,
            "sys_us": round((s1 - s0) * tick_us / max(succeeded, 1), 1) if pid else None}


def start_targets(work: str, python: str, procs: list) -> dict:
    backend, nginx_port, router_port = (base.free_port() for _ in range(3))
    base.start_small_backend(work, backend, procs)
    nginx = base.start_nginx_proxy(work, backend, f"listen 127.0.0.1:{nginx_port} http2; "
                                                  "http2_max_concurrent_streams 100;", procs)
    base._write(work, "router.yaml", base.router_config(backend, "{http2: {cleartext: true}}"))
    router = base.start_router(python, work, router_port, "router")
    procs.append(router)
    targets = {"nginx": (nginx_port, base.nginx_worker_pid(nginx)), "router": (router_port, router.pid)}
    return base.wait_targets(targets)


def main() -> int:
    args = base.side_by_side_args()
    base.ensure_tools()
    ensure_h2load()
    work = tempfile.mkdtemp(prefix="edge-bench-h2-")
    procs: list[subprocess.Popen] = []
    try:
        targets = start_targets(work, args.python, procs)
        results: dict[str, dict] = {name: {} for name in targets}
        for case, conns, streams in CASES:
            runs: dict[str, list[dict]] = {}
            for rnd in range(args.rounds):  # rounds interleave the targets: a noisy neighbour slows both alike
                for name, (port, pid) in targets.items():
                    if rnd == 0:
                        run_h2load(port, conns, streams, 1, None)  # warm-up
                    r = run_h2load(port, conns, streams, args.duration, pid)
                    runs.setdefault(name, []).append(r)
                    bad = f"  FAILED: {r['failed']} failed, {r['non2xx']} non-2xx" if r["failed"] or r["non2xx"] else ""
                    print(f"{case:8} {name:7} round {rnd + 1}: {r['rps']:>8.0f} rps  mean {r['mean_ms']} ms  "
                          f"cpu/req {r['user_us']} us user + {r['sys_us']} us kernel{bad}", flush=True)
            for name, rs in runs.items():
                ordered = sorted(rs, key=lambda r: r["rps"])
                results[name][case] = dict(ordered[len(ordered) // 2], rounds_rps=[r["rps"] for r in rs])
        # the router's own HTTP/1.1 listener (the same process) under wrk, 64 connections: HTTP/2's cost
        port, pid = targets["router"]
        h1 = base.run_rounds({"router_h1": (port, pid)}, "c64_h1", 64, "/small", args.rounds, args.duration)
        results["router_http11"] = {"c64_h1": h1["router_h1"]}
        ratios = {f"router_vs_nginx_{case}": round(results["router"][case]["rps"] / results["nginx"][case]["rps"], 3)
                  for case, _, _ in CASES}
        h1_cpu = h1["router_h1"]["user_us"] + h1["router_h1"]["sys_us"]
        h2_cpu = results["router"]["c64_m1"]["user_us"] + results["router"]["c64_m1"]["sys_us"]
        ratios["router_h2_vs_h1_cpu_per_request"] = round(h2_cpu / h1_cpu, 2) if h1_cpu else None
        report = {"targets": results, "ratios": ratios}
        print(f"\n{'target':14} {'case':8} {'rps':>9} {'CPU us/req':>11}")
        for name, cases in results.items():
            for case, r in cases.items():
                print(f"{name:14} {case:8} {r['rps']:>9.0f} {r['user_us'] + r['sys_us']:>11.1f}")
        return base.finish_report(report, args.out)
    finally:
        base.stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
