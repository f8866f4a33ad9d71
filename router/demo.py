"""`edge-router demo`: the local multi-region lab behind the seed TrafficSplit.

Starts the lab (chaos/lab/default.yaml: us-west in Dallas, eu-central in Frankfurt, ap-east in
Tokyo, each with its Kubernetes API double, ingress, pods, autoscaler and WAN relay), a router
process with the seed config/trafficsplit.yaml, and plays chaos/lab/demo.yaml: a mix of hot and
rarely-called services, a burst at a service at zero, and a region that goes silent for a while.
A live view shows what the router sees; at the end a summary is printed and an HTML report with
the timeline is written. Ctrl-C stops everything and removes what it started.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_SCENARIO = os.path.join(HERE, "chaos", "lab", "demo.yaml")


def find_seed(explicit: str | None) -> str:
    candidates = [explicit] if explicit else [os.path.join(os.getcwd(), "config", "trafficsplit.yaml"),
                                              os.path.join(HERE, "config", "trafficsplit.yaml")]
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    raise SystemExit(f"edge-router demo: seed TrafficSplit not found (looked in {', '.join(c for c in candidates if c)})")


class LiveView:
    """Redraws a small status screen on a terminal; prints a line every 5 s otherwise."""

    def __init__(self, target, duration_s: float, stream=None):
        self.target, self.duration_s = target, duration_s
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.last = 0.0

    def __call__(self, load, rec) -> None:
        now = load.now()
        if now - self.last < (1.0 if self.tty else 5.0):
            return
        self.last = now
        text = self.render(load, rec, now)
        if self.tty:
            self.stream.write("\x1b[H\x1b[2J" + text + "\n")
        else:
            self.stream.write(text.splitlines()[0] + "\n")
        self.stream.flush()

    def render(self, load, rec, now: float) -> str:
        st = self.target.last_state or {}
        clusters = st.get("clusters", {})
        services = st.get("services", {})
        held = st.get("held", {})
        recent = [o for o in load.outcomes if o.kind != "pending" and o.t >= now - 5]
        total = max(sum(1 for o in recent if o.succeeded), 1)
        failed = sum(1 for o in load.outcomes if o.kind != "pending" and not o.succeeded)
        done = sum(1 for o in load.outcomes if o.kind != "pending")
        faults = [w["label"] for w in rec.windows if w["end"] is None]
        lines = [f"edge-router demo  t={now:5.1f}s/{self.duration_s:.0f}s  requests {done} done, {load.inflight} in flight, "
                 f"{failed} failed  held {int(sum(held.values()))}  faults: {', '.join(faults) or 'none'}",
                 "",
                 f"{'cluster':<12}{'RTT ms':>8}  {'health':<10}{'split 5s':>9}  warm/cold per service"]
        for name, c in clusters.items():
            rtt = c.get("rtt_s")
            share = sum(1 for o in recent if o.cluster == name and o.succeeded) / total * 100
            health = "healthy" if c["health"]["healthy"] else ("ejected" if c["health"]["ejected"] else "down")
            warm = " ".join(f"{svc}:{_short(v.get(name, {}).get('warmth', '?'))}" for svc, v in services.items())
            lines.append(f"{name:<12}{(rtt or 0) * 1000:>8.1f}  {health:<10}{share:>8.1f}%  {warm}")
        if held and any(held.values()):
            lines.append("held: " + ", ".join(f"{k} {v}" for k, v in held.items() if v))
        return "\n".join(lines)


def _short(w: str) -> str:
    return {"warm": "WARM", "cached": "cached", "cold": "cold", "waking": "waking"}.get(w, w)


async def demo(duration_s: float, report_path: str, seed_split: str | None, live: bool = True) -> int:
    from chaos.drill import load_drill
    from chaos.runner import LabTarget, execute

    seed_path = find_seed(seed_split)
    drill = load_drill(DEMO_SCENARIO)
    drill.short_scale = duration_s / drill.duration_s
    drill = drill.shortened()
    workdir = tempfile.mkdtemp(prefix="edge-router-demo-")
    target = LabTarget(drill, workdir)
    drill.services = {s.name: s.weight for s in target.lab.config.services}
    target.split_path = seed_path
    report_path = os.path.abspath(report_path)
    try:
        print(f"edge-router demo: starting the lab ({', '.join(f'{c.spec.name} {c.spec.rtt_ms:g} ms' for c in target.lab.clusters.values())} "
              f"from the edge in {target.lab.config.edge}) and the router with {seed_path}", flush=True)
        await target.setup()
        r = target.ready[0]
        print(f"  router on 127.0.0.1:{r.port}, admin on 127.0.0.1:{r.admin_port}; running for {duration_s:g}s "
              f"(Ctrl-C stops)", flush=True)
        print(f"  inject a fault meanwhile: curl -XPOST 127.0.0.1:{target.control.port}/faults "
              f"-d '{{\"type\": \"latency\", \"cluster\": \"eu-central\", \"latency\": \"300ms\"}}'", flush=True)
        view = LiveView(target, duration_s) if live else None
        t0 = time.monotonic()
        report = await execute(drill, target, workdir, False, on_tick=view, title="edge-router demo",
                               html_path=report_path)
        print_summary(report, target, time.monotonic() - t0)
        return 0 if report["failed"] == 0 else 1
    finally:
        await target.teardown()
        shutil.rmtree(workdir, ignore_errors=True)


def print_summary(report: dict, target, took_s: float) -> None:
    print(f"\nedge-router demo: {report['sent']} requests in {took_s:.0f}s, {report['failed']} failed, "
          f"{report['lost']} lost; p50 {report['p50_ms']:.1f} ms, p99 {report['p99_ms']:.1f} ms")
    print(f"  cold starts: {report['cold_waited']} requests waited on one, {report['cold_avoided']} were sent to a "
          f"warm region instead of a cold one (warm-preferred)")
    ok = max(report["succeeded"], 1)
    weights = target.weights()
    wsum = sum(weights.values()) or 1
    print(f"  {'cluster':<12}{'configured':>11}{'observed':>10}")
    for name in target.clusters:
        print(f"  {name:<12}{weights.get(name, 0) / wsum * 100:>10.1f}%{report['per_cluster'].get(name, 0) / ok * 100:>9.1f}%")
    for w in report["faults"]:
        print(f"  fault {w['fault']['type']} on {w['fault'].get('cluster')} from {w['start']:.0f}s to {w['end']:.0f}s")
    for reason, n in report.get("failure_reasons", {}).items():
        print(f"  {n} x {reason}")
    print(f"  report: {report['html']}")


def run_demo(duration_s: float, report_path: str, seed_split: str | None, live: bool = True) -> int:
    import uvloop
    try:
        return uvloop.run(demo(duration_s, report_path, seed_split, live))
    except KeyboardInterrupt:
        print("\nedge-router demo: stopped", file=sys.stderr)
        return 130
