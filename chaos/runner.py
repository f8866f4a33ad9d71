"""`edge-router chaos run DRILL.yaml`: run a drill against the lab (or a Kubernetes deployment,
see chaos/kube_target.py), then write report.json, report.html and print a summary.

Against the lab: start the simulated clusters, one or more router processes in front of them,
wait until the routers have probed every cluster, then drive the load while the fault schedule
and actions run; a monitor samples each router's /debug/state (health) and /metrics (held
requests) every 100 ms. Exit 0 when every criterion and the steady-state hypothesis hold, 1
otherwise (2 for a drill file that does not parse).
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import tempfile
import time

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from . import faults as faultlib
from .drill import Drill, DrillError, load_drill
from .lab.config import load_lab
from .lab.control import LabControl
from .lab.lab import Lab
from .load import Burst, Load, Mix, summarise, timeline
from .report import render
from .routerproc import RouterProcess
from .verdict import Record, judge, steady_state


class LabTarget:
    """The drill's world: the lab, router replicas in front of it, their admin APIs."""

    def __init__(self, drill: Drill, workdir: str):
        self.drill, self.workdir = drill, workdir
        self.lab = Lab(load_lab(None, drill.lab), workdir)
        self.control = LabControl(self.lab)  # faults at run time: POST /faults
        self.token = secrets.token_hex(16)
        self.routers: list[RouterProcess] = []
        self.ready: list[RouterProcess] = []
        self.config_dir = os.path.join(workdir, "router-config")
        self.exit_codes: list[int] = []
        self.count = 0
        self.last_state: dict = {}
        self.split_path: str | None = None  # the TrafficSplit the routers start with (default: the seed)

    @property
    def clusters(self) -> list[str]:
        return list(self.lab.clusters)

    def hosts(self) -> dict[str, str]:
        return {s.name: s.host for s in self.lab.config.services}

    async def setup(self) -> None:
        await self.lab.start()
        await self.control.start()
        self.lab.write_router_config(self.config_dir, self.split_path, router=self.drill.router,
                                     service_options=self.drill.service_options)
        for _ in range(self.drill.routers):
            self.ready.append(await self._start_router())

    async def _start_router(self) -> RouterProcess:
        self.count += 1
        r = RouterProcess(self.config_dir, os.path.join(self.workdir, f"router-{self.count}.log"),
                          env={"EDGE_ROUTER_ADMIN_TOKEN": self.token})
        await r.start()
        self.routers.append(r)
        await self.wait_probed(r)
        return r

    async def wait_probed(self, r: RouterProcess, timeout_s: float = 10.0) -> None:
        """Every cluster probed at least once (an RTT estimate) and /readyz answering 200."""
        end = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < end:
                try:
                    async with s.get(f"http://127.0.0.1:{r.admin_port}/debug/state") as resp:
                        st = await resp.json()
                    async with s.get(f"http://127.0.0.1:{r.admin_port}/readyz") as resp:
                        ready = resp.status == 200
                    if ready and all(c.get("rtt_s") is not None for c in st["clusters"].values()):
                        return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"router on port {r.port} did not probe every cluster within {timeout_s:g}s")

    def targets(self) -> list[int]:
        return [r.port for r in self.ready]

    async def teardown(self) -> None:
        for r in self.routers:
            if r.proc is not None and r.proc.poll() is None:
                await r.stop()
        await self.control.stop()
        await self.lab.stop()

    async def inject(self, fault: dict):
        return await faultlib.apply(self.lab, fault)

    async def act(self, action: dict, log: list, now) -> None:
        if action["type"] == "reload":
            self._rewrite_split(action.get("weights") or {})
            async with aiohttp.ClientSession() as s:
                for r in self.ready:
                    async with s.post(f"http://127.0.0.1:{r.admin_port}/admin/reload",
                                      headers={"Authorization": f"Bearer {self.token}"}) as resp:
                        body = await resp.text()
                        if resp.status != 200:
                            raise RuntimeError(f"reload refused: {resp.status} {body}")
            log.append({"t": now(), "action": "reload", "weights": action.get("weights")})
        elif action["type"] == "restart_router":
            # As Kubernetes does it: the endpoint leaves the load balancer, preStop waits for that to
            # propagate, SIGTERM drains, a new replica becomes ready and joins.
            old = self.ready.pop(0)
            log.append({"t": now(), "action": "restart_router", "port": old.port})
            await asyncio.sleep(float(action.get("propagation_s", 0.5)))
            t_term = now()
            code = await old.stop(timeout_s=30)
            self.exit_codes.append(code if code is not None else -1)
            log.append({"t": now(), "action": "router_exited", "code": code, "drain_s": round(now() - t_term, 3)})
            self.ready.append(await self._start_router())
            log.append({"t": now(), "action": "router_ready"})

    def weights(self) -> dict[str, float]:
        """The configured weight per cluster of the split the routers run."""
        with open(os.path.join(self.config_dir, "trafficsplit.yaml")) as fh:
            doc = yaml.safe_load(fh)
        return {e["name"]: float(e.get("weight", 0)) for e in doc["spec"]["clusters"]}

    def _rewrite_split(self, weights: dict) -> None:
        path = os.path.join(self.config_dir, "trafficsplit.yaml")
        with open(path) as fh:
            doc = yaml.safe_load(fh)
        for entry in doc["spec"]["clusters"]:
            if entry["name"] in weights:
                entry["weight"] = weights[entry["name"]]
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False)
        os.replace(tmp, path)

    def admin_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{r.admin_port}" for r in self.ready]


async def sample_admins(session: aiohttp.ClientSession, urls: list[str], now: float, rec: Record) -> dict | None:
    """Health per cluster from each router's /debug/state and its held requests from /metrics (the
    most held for one service, summed over the routers: each hold queue is bounded per service).
    Returns the first router's state (for live views)."""
    held: dict[str, float] = {}
    first = None
    for url in urls:
        try:
            async with session.get(f"{url}/debug/state") as resp:
                st = await resp.json()
            first = first or st
            for name, c in st["clusters"].items():
                rec.health.append((now, name, bool(c["health"]["healthy"])))
            async with session.get(f"{url}/metrics") as resp:
                text = await resp.text()
            for fam in text_string_to_metric_families(text):
                if fam.name == "router_buffered_requests":
                    for x in fam.samples:
                        held[x.labels.get("service", "")] = held.get(x.labels.get("service", ""), 0.0) + x.value
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
            continue
    rec.queue.append((now, max(held.values(), default=0.0)))
    return first


async def execute(drill: Drill, target, out_dir: str, short: bool, on_tick=None, title: str | None = None,
                  html_path: str | None = None) -> dict:
    """Run the load, faults and actions; judge; write report.json and report.html into out_dir.
    `on_tick(load, rec)` is called after each monitor sample (the demo's live view)."""
    load = Load(target.targets, target.hosts(), Mix(drill.services, drill.post_fraction), drill.rate,
                drill.duration_s, [Burst(at, s, n) for at, s, n in drill.bursts], timeout_s=drill.timeout_s)
    rec = Record(outcomes=load.outcomes, end_s=drill.duration_s)
    aborted: list[str] = []
    reverts: list = []

    def now() -> float:
        return load.now()

    async def faults_schedule():
        events = sorted([(f["at_s"], 0, f) for f in drill.faults] + [(a["at_s"], 1, a) for a in drill.actions],
                        key=lambda e: (e[0], e[1]))
        running = []
        for at, kind, item in events:
            await asyncio.sleep(max(at - now(), 0))
            if load.stopped:
                return
            if kind == 0:
                revert = await target.inject(item)
                window = {"start": now(), "end": None, "fault": {k: v for k, v in item.items() if k not in ("at_s", "duration_s")},
                          "label": faultlib.describe(item)}
                rec.windows.append(window)
                entry = (window, revert, item["duration_s"])
                reverts.append(entry)
                running.append(asyncio.ensure_future(_revert_later(entry, now)))
            else:
                running.append(asyncio.ensure_future(target.act(item, rec.actions, now)))
        await asyncio.gather(*running)

    async def monitor():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s:
            while not load.stopped:
                t = now()
                state = await sample_admins(s, target.admin_urls(), t, rec)
                if state is not None:
                    target.last_state = state
                if on_tick is not None:
                    on_tick(load, rec)
                ab = drill.abort.get("success_ratio_below")
                if ab is not None:
                    recent = [o for o in load.outcomes if o.kind != "pending" and o.t + o.dur >= t - drill.abort["window_s"]]
                    if len(recent) >= 20 and sum(o.succeeded for o in recent) / len(recent) < float(ab):
                        aborted.append(f"success ratio under {ab} over {drill.abort['window_s']:g}s at t={t:.1f}s")
                        load.stopped = True
                await asyncio.sleep(0.1)

    runtime_windows: dict[int, dict] = {}

    def on_runtime_fault(event: str, entry: dict) -> None:
        """A fault injected through the lab's control API: a window in the timeline like the others."""
        if event == "start":
            w = {"start": now(), "end": None, "fault": entry["fault"], "label": entry["label"] + " (run time)"}
            runtime_windows[entry["id"]] = w
            rec.windows.append(w)
        elif entry["id"] in runtime_windows:
            runtime_windows.pop(entry["id"])["end"] = now()
    if getattr(target, "control", None) is not None:
        target.control.on_change = on_runtime_fault

    load.t0 = time.monotonic()
    mon = asyncio.ensure_future(monitor())
    sched = asyncio.ensure_future(faults_schedule())
    sched.add_done_callback(lambda t: t.cancelled() or t.exception() is None or setattr(load, "stopped", True))
    try:
        await load.run()
        if not load.stopped:  # ran its course: let the last faults revert on schedule
            await asyncio.wait_for(sched, 60)
    finally:
        load.stopped = True
        sched.cancel()
        for window, revert, _ in reverts:
            if window["end"] is None:
                await revert()
                window["end"] = now()
        await asyncio.gather(mon, return_exceptions=True)
    rec.end_s = now() if aborted else max(drill.duration_s, now())
    if getattr(target, "lab", None) is not None:
        post_ids = {o.id for o in load.outcomes if not o.idempotent}
        rec.replayed = sum(1 for rid, n in target.lab.seen.items() if n > 1 and rid in post_ids)
        rec.cut_after_send = sum(1 for o in load.outcomes if not o.idempotent and not o.succeeded
                                 and target.lab.seen.get(o.id))
        rec.refused_patches = sum(c.api.refused_patches for c in target.lab.clusters.values())
    rec.exit_codes = list(getattr(target, "exit_codes", []))

    verdicts = judge(rec, drill.criteria)
    # the hypothesis before anything happened (requests that ended before the first fault, action or
    # burst) and at the end (requests started in the last window of the load)
    first = min([w["start"] for w in rec.windows] + [a["t"] for a in rec.actions] + [b[0] for b in drill.bursts]
                + [drill.duration_s])
    before = [o for o in load.outcomes if o.t + o.dur < first]
    after = [o for o in load.outcomes if drill.duration_s - drill.steady["window_s"] <= o.t < drill.duration_s]
    hypothesis = steady_state(before, drill.steady, "before") + steady_state(after, drill.steady, "after")
    all_checks = hypothesis + verdicts
    passed = all(c["pass"] for c in all_checks) and not aborted
    s = summarise(load.outcomes)
    det = next((c["value"] for c in verdicts if c["metric"] == "detection_s"), None)
    for w in rec.windows:
        w["end"] = w["end"] if w["end"] is not None else rec.end_s
    report = {
        "drill": drill.name, "description": drill.description, "file": drill.path, "target": getattr(target, "kind", "lab"),
        "short": short, "duration_s": round(rec.end_s, 2),
        "sent": s.sent, "succeeded": s.succeeded, "failed": s.failed, "lost": s.lost, "shed": load.shed,
        "detection_s": det, "p50_ms": round(s.p50_ms, 2), "p99_ms": round(s.p99_ms, 2), "outcomes": s.kinds,
        "cold_waited": s.cold_waited, "cold_avoided": s.cold_avoided,
        "per_cluster": s.per_cluster, "failure_reasons": _reasons(load.outcomes), "faults": [{"start": round(w["start"], 3), "end": round(w["end"], 3),
                                                  "fault": w["fault"]} for w in rec.windows],
        "actions": rec.actions, "aborted": aborted[0] if aborted else None,
        "criteria": all_checks, "verdict": "pass" if passed else ("aborted" if aborted else "fail"),
        "timeline": timeline(load.outcomes, 0.5, target.clusters, rec.end_s),
        "final_health": {name: c.get("health") for name, c in (target.last_state or {}).get("clusters", {}).items()},
    }
    extra = getattr(target, "extra_report", None)
    if extra is not None:
        report.update(extra())
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    windows = [{"start": w["start"], "end": w["end"], "label": w["label"]} for w in rec.windows]
    windows += [{"start": a["t"], "end": a["t"] + 0.2, "label": a["action"]} for a in rec.actions
                if a["action"] in ("reload", "restart_router")]
    summary_rows = {k: report[k] for k in ("sent", "succeeded", "failed", "lost", "detection_s", "p50_ms", "p99_ms",
                                           "outcomes", "per_cluster", "verdict")}
    report["html"] = html_path or os.path.join(out_dir, "report.html")
    with open(report["html"], "w") as fh:
        fh.write(render(title or f"Drill {drill.name}", report["timeline"], windows, summary_rows, all_checks))
    return report


def _reasons(outcomes) -> dict:
    """The most common failures, as 'STATUS kind: reason' -> count."""
    counts: dict[str, int] = {}
    for o in outcomes:
        if not o.succeeded:
            key = f"{o.status or '-'} {o.kind}: {o.reason[:80]}"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:8])


async def _revert_later(entry, now) -> None:
    window, revert, duration = entry
    await asyncio.sleep(duration)
    if window["end"] is None:
        await revert()
        window["end"] = now()


def print_summary(report: dict, out_dir: str) -> None:
    print(f"drill {report['drill']} ({'short' if report['short'] else 'full'}): {report['verdict'].upper()}")
    print(f"  sent {report['sent']}, succeeded {report['succeeded']}, failed {report['failed']}, lost {report['lost']}"
          f"; p50 {report['p50_ms']:.1f} ms, p99 {report['p99_ms']:.1f} ms; outcomes {report['outcomes']}")
    for w in report["faults"]:
        print(f"  fault {faultlib.describe(w['fault'])}: {w['start']:.1f}s-{w['end']:.1f}s")
    for a in report["actions"]:
        print(f"  action at {a['t']:.1f}s: " + ", ".join(f"{k}={v}" for k, v in a.items() if k != "t"))
    for reason, n in report["failure_reasons"].items():
        print(f"  {n} x {reason}")
    for name, h in report.get("final_health", {}).items():
        if h and (not h.get("healthy") or h.get("last_reason")):
            print(f"  {name} at the end: {'healthy' if h.get('healthy') else 'UNHEALTHY'}; {h.get('last_reason')}")
    for line in report.get("applied", []):
        print(f"  applied: {line}")
    for line in report.get("skipped", []):
        print(f"  skipped: {line}")
    for path in report.get("manifests", []):
        print(f"  manifest: {path}")
    if report["aborted"]:
        print(f"  ABORTED: {report['aborted']}")
    for c in report["criteria"]:
        value = "n/a" if c["value"] is None else c["value"]
        print(f"  [{'pass' if c['pass'] else 'FAIL'}] {c['name']}: {value} (bound {c['bound']})")
    print(f"  report: {os.path.join(out_dir, 'report.json')}, {report['html']}")


async def run(path: str, target_kind: str = "lab", short: bool = False, out: str | None = None,
              admin: str | None = None, url: str | None = None, config: list[str] | None = None) -> int:
    try:
        drill = load_drill(path)
    except DrillError as exc:
        print(f"edge-router chaos: {exc}")
        return 2
    if short:
        drill = drill.shortened()
    out_dir = out or os.path.join("drill-reports", drill.name)
    workdir = tempfile.mkdtemp(prefix=f"edge-router-drill-{drill.name}-")
    try:
        if target_kind == "kubernetes":
            from router.config.errors import ConfigError

            from .kube_target import KubernetesTarget
            if not config:
                print("edge-router chaos: --target kubernetes needs --config (the router's config: Clusters with "
                      "spec.kubernetes, Services with workloads)")
                return 2
            try:
                target = KubernetesTarget(drill, config, url or "http://127.0.0.1:8080", admin or "http://127.0.0.1:9901",
                                          os.environ.get("EDGE_ROUTER_ADMIN_TOKEN"), out_dir)
            except ConfigError as exc:
                print("\n".join(str(p) for p in exc.problems))
                return 2
        else:
            target = LabTarget(drill, workdir)
        try:
            await target.setup()
            report = await execute(drill, target, out_dir, short)
        finally:
            await target.teardown()
        print_summary(report, out_dir)
        return 0 if report["verdict"] == "pass" else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
