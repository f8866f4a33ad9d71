"""Proxy overhead: edge-router vs nginx, HAProxy and the backend direct, side by side in one run.

Each proxy is pinned to core 0 (one worker / one thread); the backend (an nginx worker
serving fixed bodies) and wrk share core 1. Cases: 64 connections with a 64-byte body
(throughput), 1 connection (added latency), 64 connections with a 1 MiB body.

    python bench/proxy.py [--duration 10] [--rounds 3] [--out FILE.json] [--python PATH]
                          [--compare-python PATH]

--python runs the router and the Python floor under another interpreter, one with the router
installed (e.g. a venv made from Debian's /usr/bin/python3.11); --compare-python adds a second
router (router_alt) under another interpreter in the same rounds. How CPython was compiled moves
the router's numbers, so the report names each interpreter and its configure arguments.

Installs nginx-light, haproxy and wrk from Debian when missing (needs root).
This is a benchmark, not a test: it prints measured numbers and ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("c64_64B", 64, "/small"), ("c1_64B", 1, "/small"), ("c64_1MiB", 64, "/big")]


def ensure_tools() -> None:
    missing = [p for p, b in (("nginx-light", "nginx"), ("haproxy", "haproxy"), ("wrk", "wrk"))
               if not shutil.which(b) and not os.path.exists(f"/usr/sbin/{b}")]
    if missing:
        print(f"installing {' '.join(missing)} from Debian ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        for svc in ("nginx", "haproxy"):  # the packages start system services; we run our own
            subprocess.run(["service", svc, "stop"], check=False, capture_output=True)


def describe_interpreter(python: str, flag: str = "--python") -> dict:
    """Version and build flags of the interpreter the router will run under; exits with a clear
    message when it cannot import the router and its dependencies."""
    probe = ("import json, sys, sysconfig, router, uvloop, httptools; a = sysconfig.get_config_var('CONFIG_ARGS') or ''; "
             "print(json.dumps({'executable': sys.executable, 'version': sys.version.split()[0], "
             "'configure_args': a}))")
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    except OSError as exc:
        sys.exit(f"{flag} {python}: {exc}")
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"{flag} {python}: cannot import the router and its dependencies ({last}); "
                 f"install it there first: {python} -m pip install -e {ROOT}")
    return json.loads(out.stdout)


def side_by_side_args() -> argparse.Namespace:
    """The arguments the side-by-side benchmarks of one case family take (bench/tls.py, bench/http2.py)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the router (default: this one)")
    return ap.parse_args()


def start_small_backend(work: str, port: int, procs: list) -> None:
    """nginx on core 1 answering /small with 64 bytes: the backend of bench/tls.py and bench/http2.py."""
    conf = nginx_conf(work, f"server {{ listen 127.0.0.1:{port}; keepalive_timeout 300s; "
                            f"location = /small {{ default_type text/plain; return 200 '{'x' * 63}\n'; }} }}")
    _write(work, "backend.conf", conf % ("backend", "backend"))
    procs.append(start(["nginx", "-c", f"{work}/backend.conf", "-p", work], 1, work, "backend"))


def start_nginx_proxy(work: str, backend: int, server: str, procs: list) -> subprocess.Popen:
    """nginx on core 0 proxying to `backend` with keep-alive upstream connections; `server`: its listen
    directive and what else the server block needs."""
    conf = nginx_conf(work, f"upstream b {{ server 127.0.0.1:{backend}; keepalive 128; }} "
                            f"server {{ {server} keepalive_timeout 300s; location / {{ proxy_pass http://b; "
                            f"proxy_http_version 1.1; proxy_set_header Connection ''; }} }}")
    _write(work, "proxy.conf", conf % ("proxy", "proxy"))
    nginx = start(["nginx", "-c", f"{work}/proxy.conf", "-p", work], 0, work, "nginx")
    procs.append(nginx)
    return nginx


def finish_report(report: dict, out: str | None) -> int:
    """Print the ratios; with --out, write the whole report as JSON."""
    print("ratios:", json.dumps(report["ratios"]))
    if out:
        with open(out, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


def wait_targets(targets: dict) -> dict:
    """`targets` ({name: (port, pid)}) once every one of them listens."""
    for port, _ in targets.values():
        wait_port(port)
    return targets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def nginx_conf(work: str, body: str) -> str:
    return f"""daemon off; worker_processes 1; pid {work}/nginx-%s.pid; error_log {work}/nginx-%s.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {work}; proxy_temp_path {work}; fastcgi_temp_path {work};
        uwsgi_temp_path {work}; scgi_temp_path {work}; keepalive_requests 1000000; {body} }}
"""


def haproxy_cfg(bind: str, backend_port: int) -> str:
    """One thread, keep-alive both ways, upstream connections reused: HAProxy set up as nginx is."""
    return f"""global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend fe
  bind {bind}
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:{backend_port}
"""


def start(cmd: list[str], core: int, work: str, name: str) -> subprocess.Popen:
    log = open(os.path.join(work, f"{name}.log"), "w")
    return subprocess.Popen(["taskset", "-c", str(core), *cmd], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def nginx_worker_pid(master: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """The worker process of an nginx started with `daemon off` (the one that serves: its CPU and memory
    are nginx's). The master spawns it after start-up, so this waits for it: measuring the idle master
    instead would report nginx at zero CPU."""
    deadline = time.monotonic() + timeout_s
    while True:
        children = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout.split()
        for pid in children:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if fh.read().startswith(b"nginx: worker process"):
                        return int(pid)
            except OSError:
                continue  # gone meanwhile
        if master.poll() is not None:
            raise SystemExit(f"nginx (pid {master.pid}) exited with {master.returncode} before a worker started")
        if time.monotonic() >= deadline:
            raise SystemExit(f"nginx (pid {master.pid}) started no worker process within {timeout_s:g} s: "
                             f"its CPU and memory cannot be measured")
        time.sleep(0.05)


def peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_ticks(pid: int | None) -> tuple[int, int]:
    """(user, system) clock ticks the process has used so far."""
    if pid is None:
        return 0, 0
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return int(fields[11]), int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
    except (OSError, IndexError, ValueError):
        return 0, 0


def run_wrk(port: int, conns: int, path: str, duration: int, pid: int | None = None, scheme: str = "http",
            headers: tuple[str, ...] = ()) -> dict:
    u0, s0 = cpu_ticks(pid)
    extra = [arg for h in headers for arg in ("-H", h)]
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", *extra,
                          f"{scheme}://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
    u1, s1 = cpu_ticks(pid)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": _lat(out, "50%"), "p99_ms": _lat(out, "99%"),
            "non2xx": int(errors.group(1)) if errors else 0,
            # CPU the proxy process spent per request, in user space and in the kernel (10 ms ticks)
            "user_us": round((u1 - u0) * tick_us / max(requests, 1), 1) if pid else None,
            "sys_us": round((s1 - s0) * tick_us / max(requests, 1), 1) if pid else None, "socket_errors": sock_err.group(1) if sock_err else ""}


def median_run(runs: list[dict]) -> dict:
    """The round with the median throughput (its latencies come with it), plus every round's rps."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    return dict(ordered[len(ordered) // 2], rounds_rps=[r["rps"] for r in runs],
                failures=[f for f in map(run_failures, runs) if f])


def run_failures(run: dict) -> str:
    """What went wrong in a wrk run, or "": an error answered fast would otherwise pass for throughput."""
    parts = [f"{run['non2xx']} non-2xx responses"] if run.get("non2xx") else []
    if run.get("socket_errors"):
        parts.append(f"socket errors: {run['socket_errors']}")
    return "; ".join(parts)


def _lat(out: str, pct: str) -> float:
    m = re.search(rf"^\s+{re.escape(pct)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per case (median reported)")
    ap.add_argument("--out")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter for the router and the Python floor (default: this one)")
    ap.add_argument("--compare-python", metavar="PATH",
                    help="also run a second router under this interpreter, as target router_alt in the same rounds")
    args = ap.parse_args()
    interpreter = describe_interpreter(args.python)
    alt_interpreter = describe_interpreter(args.compare_python, "--compare-python") if args.compare_python else None
    for name, info in (("router", interpreter), ("router_alt", alt_interpreter)):
        if info:
            print(f"{name} runs under {info['executable']} (Python {info['version']})", flush=True)
    ensure_tools()
    work = tempfile.mkdtemp(prefix="edge-bench-")
    procs: list[subprocess.Popen] = []
    try:
        with open(os.path.join(work, "big"), "wb") as fh:
            fh.write(b"x" * (1 << 20))
        backend_port, nginx_port, haproxy_port, router_port, floor_port, alt_port = (free_port() for _ in range(6))
        small = "x" * 63
        conf = nginx_conf(work, f"server {{ listen 127.0.0.1:{backend_port}; keepalive_timeout 300s; "
                                f"location = /small {{ default_type text/plain; return 200 '{small}\n'; }} "
                                f"location = /big {{ root {work}; }} }}") % ("backend", "backend")
        _write(work, "backend.conf", conf)
        procs.append(start(["nginx", "-c", f"{work}/backend.conf", "-p", work], 1, work, "backend"))
        conf = nginx_conf(work, f"upstream b {{ server 127.0.0.1:{backend_port}; keepalive 128; }} "
                                f"server {{ listen 127.0.0.1:{nginx_port}; keepalive_timeout 300s; "
                                f"location / {{ proxy_pass http://b; proxy_http_version 1.1; "
                                f"proxy_set_header Connection ''; proxy_buffering on; }} }}") % ("proxy", "proxy")
        _write(work, "proxy.conf", conf)
        nginx = start(["nginx", "-c", f"{work}/proxy.conf", "-p", work], 0, work, "nginx")
        procs.append(nginx)
        _write(work, "haproxy.cfg", haproxy_cfg(f"127.0.0.1:{haproxy_port}", backend_port))
        haproxy = start(["haproxy", "-f", f"{work}/haproxy.cfg"], 0, work, "haproxy")
        procs.append(haproxy)
        _write(work, "router.yaml", router_config(backend_port))
        router = start_router(args.python, work, router_port, "router")
        procs.append(router)
        floor = start([args.python, os.path.join(ROOT, "bench", "minimal_proxy.py"), str(floor_port),
                       str(backend_port)], 0, work, "floor")
        procs.append(floor)
        targets = {"direct": (backend_port, None), "nginx": (nginx_port, nginx_worker_pid(nginx)),
                   "haproxy": (haproxy_port, haproxy.pid), "router": (router_port, router.pid),
                   "python_floor": (floor_port, floor.pid)}
        if alt_interpreter:
            alt = start_router(args.compare_python, work, alt_port, "router_alt")
            procs.append(alt)
            targets["router_alt"] = (alt_port, alt.pid)
        for port, _ in targets.values():
            wait_port(port)
        results: dict[str, dict] = {name: {} for name in targets}
        for case, conns, path in CASES:
            # the floor only forwards small bodiless requests
            medians = run_rounds(targets, case, conns, path, args.rounds, args.duration,
                                 skip=lambda name: name == "python_floor" and path != "/small")
            for name, run in medians.items():
                results[name][case] = run
        rss = {name: peak_rss_mb(pid if pid is not None else nginx_worker_pid(procs[0]))
               for name, (_, pid) in targets.items()}  # direct: the backend's worker
        report = build_report(results, rss)
        report["python"] = interpreter
        if alt_interpreter:
            report["python_router_alt"] = alt_interpreter
        print_table(report)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(report, fh, indent=2)
        return 0
    finally:
        stop_all(procs)
        if os.environ.get("BENCH_KEEP"):
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_rounds(targets: dict, case: str, conns: int, path: str, rounds: int, duration: int, scheme: str = "http",
               headers: tuple[str, ...] = (), skip=lambda name: False) -> dict[str, dict]:
    """Each target's median round of one case. Rounds interleave the targets, so a noisy neighbour slows
    all of them alike; the first round starts with a 1 s warm-up (pools, caches, TLS sessions)."""
    runs: dict[str, list[dict]] = {}
    for rnd in range(rounds):
        for name, (port, pid) in targets.items():
            if skip(name):
                continue
            if rnd == 0:
                run_wrk(port, conns, path, 1, scheme=scheme, headers=headers)
            r = run_wrk(port, conns, path, duration, pid, scheme=scheme, headers=headers)
            runs.setdefault(name, []).append(r)
            failed = run_failures(r)
            print(f"{case:14} {name:12} round {rnd + 1}: {r['rps']:>8.0f} rps  p50 {r['p50_ms']:.3f} ms  "
                  f"p99 {r['p99_ms']:.3f} ms" + (f"  cpu/req {r['user_us']} us user + {r['sys_us']} us kernel"
                                                 if r["user_us"] is not None else "")
                  + (f"  FAILED: {failed}" if failed else ""), flush=True)
    return {name: median_run(rs) for name, rs in runs.items()}


def stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each process group, then SIGKILL to any still there after 10 s."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def router_config(backend_port: int, router_spec: str = "") -> str:
    """The backend as the one cluster of a seed-like latency-aware split; `router_spec`: a Router
    document's spec (flow style), when the case needs one."""
    router = (f"---\napiVersion: edge.router/v1alpha1\nkind: Router\nmetadata: {{name: edge}}\n"
              f"spec: {router_spec}\n") if router_spec else ""
    return f"""apiVersion: edge.router/v1alpha1
kind: Cluster
metadata: {{name: local, labels: {{region: local}}}}
spec: {{endpoint: "http://127.0.0.1:{backend_port}"}}
---
apiVersion: edge.router/v1alpha1
kind: TrafficSplit
metadata: {{name: bench}}
spec:
  clusters: [{{name: local, weight: 1}}]
  strategy: {{algorithm: latency-aware, params: {{maxRTT: 200ms}}}}
""" + router


def start_router(python: str, work: str, port: int, name: str) -> subprocess.Popen:
    return start([python, "-m", "router", "serve", "--config", f"{work}/router.yaml", "--listen", f"127.0.0.1:{port}",
                  "--admin", "127.0.0.1:0", "--log-level", "warning"], 0, work, name)


def _write(work: str, name: str, text: str) -> None:
    with open(os.path.join(work, name), "w") as fh:
        fh.write(text)


def build_report(results: dict, rss: dict) -> dict:
    targets = {}
    for name, cases in results.items():
        main = cases["c64_64B"]
        cases.setdefault("c64_1MiB", {"rps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0})
        targets[name] = {"rps": main["rps"], "p50_ms": main["p50_ms"], "p99_ms": main["p99_ms"],
                         "cpu_user_us_per_req": main.get("user_us"), "cpu_sys_us_per_req": main.get("sys_us"),
                         "rss_mb": round(rss[name], 1), "cases": cases}
    direct_p50 = results["direct"]["c1_64B"]["p50_ms"]
    report = {
        "targets": targets,
        "ratios": {"router_vs_nginx": _ratio(results, "router", "nginx"),
                   "router_vs_haproxy": _ratio(results, "router", "haproxy"),
                   "router_1MiB_vs_nginx": _ratio(results, "router", "nginx", "c64_1MiB"),
                   "router_vs_python_floor": _ratio(results, "router", "python_floor"),
                   "python_floor_vs_nginx": _ratio(results, "python_floor", "nginx")},
        "added_p50_ms_at_1_connection": {n: round(results[n]["c1_64B"]["p50_ms"] - direct_p50, 3)
                                         for n in ("nginx", "haproxy", "router", "python_floor", "router_alt")
                                         if n in results},
        # Paired: router and the other proxy ran back to back in the same round, so a slow spell of the
        # machine shows up on both sides of each ratio; the spread says how far one run can be trusted.
        "ratios_per_round": {f"router_vs_{other}": paired_ratios(results, "router", other)
                             for other in ("nginx", "haproxy", "python_floor")},
    }
    failures = {f"{name} {case}": case_result["failures"] for name, cases in results.items()
                for case, case_result in cases.items() if case_result.get("failures")}
    if failures:
        report["failures"] = failures
    if "router_alt" in results:
        for other in ("nginx", "router"):
            report["ratios"][f"router_alt_vs_{other}"] = _ratio(results, "router_alt", other)
            report["ratios_per_round"][f"router_alt_vs_{other}"] = paired_ratios(results, "router_alt", other)
    return report


def _ratio(results: dict, name: str, other: str, case: str = "c64_64B") -> float:
    return round(results[name][case]["rps"] / results[other][case]["rps"], 3)


def paired_ratios(results: dict, name: str, other: str) -> list[float]:
    mine = results[name]["c64_64B"].get("rounds_rps", [])
    theirs = results[other]["c64_64B"].get("rounds_rps", [])
    return [round(a / b, 3) for a, b in zip(mine, theirs) if b]


def print_table(report: dict) -> None:
    print("\ntarget        64B c64 rps   p50 ms   p99 ms  | CPU us/req user+kernel | c1 p50 ms | 1MiB c64 rps |"
          " peak RSS MB")
    for name, t in report["targets"].items():
        c = t["cases"]
        cpu = (f"{t['cpu_user_us_per_req']:>9.1f} + {t['cpu_sys_us_per_req']:<10.1f}"
               if t["cpu_user_us_per_req"] is not None else f"{'-':>22}")
        print(f"{name:12} {t['rps']:>12.0f} {t['p50_ms']:>8.3f} {t['p99_ms']:>8.3f}  | {cpu} | {c['c1_64B']['p50_ms']:>9.3f} |"
              f" {c['c64_1MiB']['rps']:>12.0f} | {t['rss_mb']:>10.1f}")
    print("ratios:", json.dumps(report["ratios"]))
    print("ratios per round (64 B, 64 connections):", json.dumps(report["ratios_per_round"]))
    print("added p50 at 1 connection (ms):", json.dumps(report["added_p50_ms_at_1_connection"]))
    for where, failures in report.get("failures", {}).items():
        print(f"WARNING: {where} had failed requests, its numbers are not a clean measurement: "
              f"{' | '.join(failures)}")


if __name__ == "__main__":
    sys.exit(main())
