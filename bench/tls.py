"""TLS termination: edge-router vs nginx and HAProxy, each terminating HTTPS on one core in front of
the same plain-HTTP backend, side by side in one run (the layout of bench/proxy.py: proxies pinned to
core 0, the backend and wrk to core 1).

Cases: 64 keep-alive connections with a 64-byte body (what TLS adds per request once connections are
open: record encryption and decryption), and 16 connections that close after every response (a full
handshake per request: the handshake rate). One ECDSA P-256 certificate, made with openssl; TLS 1.3.

    python bench/tls.py [--duration 5] [--rounds 3] [--out FILE.json]

This is a benchmark, not a test: it prints measured numbers and ratios.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import proxy as base  # noqa: E402

CASES = [("keepalive_c64", 64, ()), ("handshake_c16", 16, ("Connection: close",))]


def make_certificate(work: str) -> tuple[str, str, str]:
    """(certificate, key, both in one file for HAProxy)."""
    cert, key, both = (os.path.join(work, n) for n in ("cert.pem", "key.pem", "both.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    with open(both, "w") as out:
        out.write(open(cert).read() + open(key).read())
    return cert, key, both


def start_targets(work: str, python: str, procs: list) -> dict:
    backend, nginx_port, haproxy_port, router_port = (base.free_port() for _ in range(4))
    cert, key, both = make_certificate(work)
    base.start_small_backend(work, backend, procs)
    nginx = base.start_nginx_proxy(work, backend, f"listen 127.0.0.1:{nginx_port} ssl; ssl_certificate {cert}; "
                                                  f"ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;", procs)
    base._write(work, "haproxy.cfg", base.haproxy_cfg(f"127.0.0.1:{haproxy_port} ssl crt {both}", backend))
    haproxy = base.start(["haproxy", "-f", f"{work}/haproxy.cfg"], 0, work, "haproxy")
    procs.append(haproxy)
    base._write(work, "router.yaml", base.router_config(backend, f"{{tls: {{certFile: {cert}, keyFile: {key}}}}}"))
    router = base.start_router(python, work, router_port, "router")
    procs.append(router)
    targets = {"nginx": (nginx_port, base.nginx_worker_pid(nginx)), "haproxy": (haproxy_port, haproxy.pid),
               "router": (router_port, router.pid)}
    return base.wait_targets(targets)


def main() -> int:
    args = base.side_by_side_args()
    base.ensure_tools()
    work = tempfile.mkdtemp(prefix="edge-bench-tls-")
    procs: list[subprocess.Popen] = []
    try:
        targets = start_targets(work, args.python, procs)
        results: dict[str, dict] = {name: {} for name in targets}
        for case, conns, headers in CASES:
            medians = base.run_rounds(targets, case, conns, "/small", args.rounds, args.duration, scheme="https",
                                      headers=headers)
            for name, run in medians.items():
                results[name][case] = run
        report = {"targets": results, "ratios": {
            f"router_vs_{other}_{case}": round(results["router"][case]["rps"] / results[other][case]["rps"], 3)
            for other in ("nginx", "haproxy") for case, _, _ in CASES}}
        print(f"\n{'target':8} {'keep-alive rps':>15} {'p50 ms':>7} {'CPU us/req':>14} | {'handshakes/s':>12} "
              f"{'CPU us/handshake':>17}")
        for name, cases in results.items():
            k, h = cases["keepalive_c64"], cases["handshake_c16"]
            print(f"{name:8} {k['rps']:>15.0f} {k['p50_ms']:>7.3f} {k['user_us'] + k['sys_us']:>14.1f} | "
                  f"{h['rps']:>12.0f} {h['user_us'] + h['sys_us']:>17.1f}")
        return base.finish_report(report, args.out)
    finally:
        base.stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
