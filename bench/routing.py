"""Routing quality: a discrete-event simulation in virtual time that drives the router's real
policy code (router.core) against a multi-region serverless model, next to baseline policies.

Model: an edge in Dallas; clusters us-west (Dallas), eu-central (Frankfurt), ap-east (Tokyo)
with RTTs from ../shared/data/inter-region-rtt-ms.csv; the seed weights 45/35/20 and maxRTT
200ms. 200 services with Zipf popularity and on/off bursty arrivals (most services called less
than once a minute, a few hot ones), handler times of a few hundred ms (half under one second),
per-pod concurrency 10, scale to zero after 60 s idle, cold start 1 s with the image cached on a
node and 6 s without (an image stays cached for 30 min after its last pod). Every policy sees
the same arrivals.

Policies: static (weighted random, what nginx/HAProxy with the seed weights do), round_robin,
lowest_rtt, and router (router.core.choice with warm/cold state, RTT and server time fed the way
the control plane feeds them; its wake hints start a pod in the background; router.core.keepwarm
keeps copies of rarely called services warm where their idle-time histogram expects the next
call), also shown without keep-warm. Each policy's warm pod-hours are reported: keep-warm costs
replica time.

    python bench/routing.py [--seed N] [--minutes 60] [--out FILE.json]

Deterministic for a seed. Prints the table and the target ratios.
"""
from __future__ import annotations

import argparse
import csv
import heapq
import itertools
import json
import math
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from router.config.model import Backend, ClusterConfig, Config, Endpoint, RouterSettings, SplitConfig  # noqa: E402
from router.core.choice import PolicyInputs, choose_backend  # noqa: E402
from router.core.keepwarm import KeepWarmPolicy  # noqa: E402
from router.core.snapshot import build_snapshot  # noqa: E402

CLUSTERS = {"us-west": "Dallas", "eu-central": "Frankfurt", "ap-east": "Tokyo"}
WEIGHTS = {"us-west": 45, "eu-central": 35, "ap-east": 20}
EDGE = "Dallas"
LOCAL_RTT_MS = 1.0  # same-region round trip (the table's diagonal is 0; inter-zone is 0.1-2.2 ms)
SERVICES = 200
TOTAL_RATE = 12.0  # requests per second over all services
ZIPF_S = 1.3
CONCURRENCY = 10
IDLE_S = 60.0
COLD_CACHED_S, COLD_UNCACHED_S = 1.0, 6.0
IMAGE_TTL_S = 1800.0


def rtt_table() -> dict[str, float]:
    path = os.path.join(ROOT, "..", "shared", "data", "inter-region-rtt-ms.csv")
    with open(path) as fh:
        rows = {r["from"]: r for r in csv.DictReader(fh)}
    return {c: (float(rows[EDGE][city]) or LOCAL_RTT_MS) / 1000 for c, city in CLUSTERS.items()}


# --- workload -----------------------------------------------------------------------------
def make_workload(rng: random.Random, duration_s: float) -> list[tuple[float, int, float]]:
    """(arrival time, service, handler seconds), sorted by time."""
    ranks = list(range(1, SERVICES + 1))
    norm = sum(r ** -ZIPF_S for r in ranks)
    arrivals = []
    for s in range(SERVICES):
        rate = TOTAL_RATE * (ranks[s] ** -ZIPF_S) / norm
        # Per-service median handler time, log-uniform 0.1-10 s: about half of functions under one second.
        median = math.exp(rng.uniform(math.log(0.1), math.log(10.0)))
        # On/off bursts: on periods (mean 60 s) carry 20x the off rate (mean 600 s).
        on_mean, off_mean, ratio = 60.0, 600.0, 20.0
        off_rate = rate * (on_mean + off_mean) / (on_mean * ratio + off_mean)
        t, on = rng.uniform(0, off_mean), False
        while t < duration_s:
            span = rng.expovariate(1 / (on_mean if on else off_mean))
            lam = off_rate * (ratio if on else 1.0)
            u = t
            while lam > 0:
                u += rng.expovariate(lam)
                if u >= min(t + span, duration_s):
                    break
                arrivals.append((u, s, median * math.exp(rng.gauss(0, 0.4))))
            t += span
            on = not on
    arrivals.sort()
    return arrivals


# --- clusters -----------------------------------------------------------------------------
class Deployment:
    """One service in one cluster: pods, a FIFO of waiting requests, the image cache."""
    __slots__ = ("pods", "starting", "queue", "last_busy", "cached_until", "idle_token", "changed")

    def __init__(self, cached: bool):
        self.pods: list[int] = []  # busy slots per ready pod
        self.starting = 0
        self.queue: list = []
        self.last_busy = 0.0
        self.cached_until = math.inf if cached else -1.0
        self.idle_token = 0
        self.changed = 0.0  # when the number of ready pods last changed (for pod-seconds)


KEEPWARM_TICK_S = 5.0


class Sim:
    def __init__(self, policy: str, workload, seed: int, rtts: dict[str, float], keep_warm: bool = False):
        self.policy, self.workload, self.rtts = policy, workload, rtts
        # The router's keep-warm (router.core.keepwarm): copies of rarely called services held
        # warm in the window their idle-time histogram predicts the next call in.
        self.keep = KeepWarmPolicy() if keep_warm else None
        self.pod_seconds = 0.0
        self.prewarms = 0
        self.rng = random.Random(seed * 7 + 1)
        cache_rng = random.Random(seed * 13 + 5)  # the same initial image caches for every policy
        self.deps = {(c, s): Deployment(cache_rng.random() < 0.5) for s in range(SERVICES) for c in CLUSTERS}
        self.events: list = []
        self.seq = itertools.count()
        self.results: list[tuple[float, bool, str, float]] = []  # latency, waited cold, cluster, handler
        self.rr = itertools.cycle(sorted(CLUSTERS, key=lambda c: -WEIGHTS[c]))
        self.inputs = PolicyInputs()
        self.handlers: dict = {}
        clusters = tuple(ClusterConfig(n, (), Endpoint("http", n, 80)) for n in CLUSTERS)
        split = SplitConfig("seed", "trafficsplit", (), "/", tuple(Backend(n, WEIGHTS[n]) for n in CLUSTERS),
                            "latency-aware", 0.2)
        self.route = build_snapshot(Config(RouterSettings(), clusters, (split,)), 1).route_for("h", "/")
        for c, rtt in rtts.items():
            self.inputs.rtt.on_probe(c, rtt, rtt, 0.0)
        for (c, s), d in self.deps.items():
            self.inputs.warmth.on_discovery(str(s), c, 0, d.cached_until > 0, 0.0)

    # events
    def at(self, t: float, kind: str, *data) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, data))

    def run(self) -> list:
        for t, s, handler in self.workload:
            self.at(t, "arrive", s, handler)
        end = self.workload[-1][0] if self.workload else 0.0
        if self.keep is not None:
            self.at(KEEPWARM_TICK_S, "keepwarm_tick", end)
        now = 0.0
        while self.events:
            now, _, kind, data = heapq.heappop(self.events)
            getattr(self, "on_" + kind)(now, *data)
        for d in self.deps.values():
            self.pods_changed(now, d)
        return self.results

    def pods_changed(self, now: float, d: Deployment) -> None:
        self.pod_seconds += len(d.pods) * (now - d.changed)
        d.changed = now

    def on_keepwarm_tick(self, now: float, end: float) -> None:
        """The router's keep-warm loop (router.core.keepwarm decides): wake a copy at zero whose
        window opens; ping a warm one, which counts as activity for the cluster's idle timeout."""
        state = lambda svc, c: self.inputs.warmth.warmth(svc, c, now).value  # noqa: E731
        for action, svc, c in self.keep.actions(now, state):
            s = int(svc)
            d = self.deps[(c, s)]
            if action == "wake" and not d.pods and not d.starting:
                self.prewarms += 1
                self.start_pod(now, c, s)
            elif action == "ping" and d.pods and not any(d.pods):
                self.schedule_idle(now, c, s)
        if now < end:
            self.at(now + KEEPWARM_TICK_S, "keepwarm_tick", end)

    def choose(self, now: float, s: int) -> str:
        if self.policy == "static":
            return self.rng.choices(list(CLUSTERS), weights=[WEIGHTS[c] for c in CLUSTERS])[0]
        if self.policy == "round_robin":
            return next(self.rr)
        if self.policy == "lowest_rtt":
            return min(CLUSTERS, key=self.rtts.get)
        for c in CLUSTERS:
            self.inputs.warmth.on_heartbeat(c, now)  # the discovery watches are current
        d = choose_backend(self.route, self.inputs, now, self.rng, service=str(s))
        for c in d.wake:
            self.wake(now, c, s)
        return d.backend.cluster

    def on_arrive(self, now: float, s: int, handler: float) -> None:
        c = self.choose(now, s)
        if self.keep is not None:
            self.keep.on_served(str(s), c, now)
        self.inputs.start(str(s), c)
        self.at(now + self.rtts[c] / 2, "reach", c, s, handler, now)
        self.handlers[(s, now)] = handler

    def on_reach(self, now: float, c: str, s: int, handler: float, sent: float) -> None:
        d = self.deps[(c, s)]
        for i, busy in enumerate(d.pods):
            if busy < CONCURRENCY:
                d.pods[i] += 1
                self.at(now + handler, "finish", c, s, i, sent, False)
                return
        d.queue.append((handler, sent))
        if d.starting * CONCURRENCY < len(d.queue):
            self.start_pod(now, c, s)

    def start_pod(self, now: float, c: str, s: int) -> None:
        d = self.deps[(c, s)]
        cached = d.cached_until >= now
        d.starting += 1
        if not d.pods and d.starting == 1:
            self.inputs.warmth.on_wake(str(s), c, now)
        self.at(now + (COLD_CACHED_S if cached else COLD_UNCACHED_S), "ready", c, s)

    def wake(self, now: float, c: str, s: int) -> None:
        d = self.deps[(c, s)]
        if not d.pods and not d.starting:
            self.start_pod(now, c, s)

    def on_ready(self, now: float, c: str, s: int) -> None:
        d = self.deps[(c, s)]
        d.starting -= 1
        d.cached_until = math.inf
        self.pods_changed(now, d)
        d.pods.append(0)
        i = len(d.pods) - 1
        self.publish(now, c, s)
        while d.queue and d.pods[i] < CONCURRENCY:
            handler, sent = d.queue.pop(0)
            d.pods[i] += 1
            self.at(now + handler, "finish", c, s, i, sent, True)
        if d.pods[i] == 0:
            self.schedule_idle(now, c, s)

    def on_finish(self, now: float, c: str, s: int, i: int, sent: float, cold: bool) -> None:
        d = self.deps[(c, s)]
        latency = now - sent + self.rtts[c] / 2
        self.results.append((latency, cold, c, self.handlers.pop((s, sent), 0.0)))
        self.inputs.finish(str(s), c)
        self.inputs.rtt.on_first_byte(str(s), c, latency, now)
        d.last_busy = now
        if i < len(d.pods):
            d.pods[i] -= 1
            if d.queue:
                handler, qsent = d.queue.pop(0)
                d.pods[i] += 1
                self.at(now + handler, "finish", c, s, i, qsent, False)
        if all(b == 0 for b in d.pods):
            self.schedule_idle(now, c, s)

    def schedule_idle(self, now: float, c: str, s: int) -> None:
        d = self.deps[(c, s)]
        d.idle_token += 1
        self.at(now + IDLE_S, "idle", c, s, d.idle_token)

    def on_idle(self, now: float, c: str, s: int, token: int) -> None:
        d = self.deps[(c, s)]
        if token != d.idle_token or any(d.pods) or d.queue or not d.pods:
            return
        self.pods_changed(now, d)
        d.pods = []  # scale to zero
        d.cached_until = now + IMAGE_TTL_S
        self.publish(now, c, s)

    def publish(self, now: float, c: str, s: int) -> None:
        """What a Kubernetes watch would tell the router."""
        d = self.deps[(c, s)]
        self.inputs.warmth.on_discovery(str(s), c, len(d.pods), d.cached_until >= now, now,
                                        len(d.pods) * CONCURRENCY or None)


def workload_shape(workload: list, minutes: float) -> dict:
    """The facts from ../shared/data/README.md the workload is meant to show."""
    per_service = [0] * SERVICES
    for _, s, _ in workload:
        per_service[s] += 1
    ranked = sorted(per_service, reverse=True)
    handlers = sorted(h for _, _, h in workload)
    return {"services_under_1_per_min": round(sum(1 for n in per_service if n / minutes < 1) / SERVICES, 3),
            "top_20pct_services_share": round(sum(ranked[:SERVICES // 5]) / max(len(workload), 1), 3),
            "handler_under_1s_share": round(sum(1 for h in handlers if h < 1) / max(len(handlers), 1), 3)}


def summarise(results: list) -> dict:
    lat = sorted(r[0] for r in results)
    delay = sorted(r[0] - r[3] for r in results)  # what routing adds: RTT, queueing, cold-start wait
    n = len(lat)

    def pct(values: list, p: float) -> float:
        return round(values[min(int(p * n), n - 1)] * 1000, 1)
    return {"requests": n, "cold_share": round(sum(1 for r in results if r[1]) / n, 4),
            "mean_ms": round(sum(lat) / n * 1000, 1), "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
            "p999_ms": pct(lat, 0.999), "cross_region_share": round(sum(1 for r in results if r[2] != "us-west") / n, 4),
            "delay_mean_ms": round(sum(delay) / n * 1000, 1), "delay_p99_ms": pct(delay, 0.99)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--out")
    args = ap.parse_args()
    rtts = rtt_table()
    workload = make_workload(random.Random(args.seed), args.minutes * 60)
    report = {"seed": args.seed, "minutes": args.minutes, "requests": len(workload),
              "rtt_ms": {c: round(v * 1000, 1) for c, v in rtts.items()}, "workload": workload_shape(workload, args.minutes),
              "policies": {}}
    for name, policy, keep in (("static", "static", False), ("round_robin", "round_robin", False),
                               ("lowest_rtt", "lowest_rtt", False), ("router", "router", True),
                               ("router_no_keepwarm", "router", False)):
        sim = Sim(policy, workload, args.seed, rtts, keep_warm=keep)
        report["policies"][name] = summarise(sim.run())
        report["policies"][name]["pod_hours"] = round(sim.pod_seconds / 3600, 1)
        report["policies"][name]["prewarms"] = sim.prewarms
    p = report["policies"]
    report["targets"] = {
        "cold_share_router_vs_static": round(p["router"]["cold_share"] / max(p["static"]["cold_share"], 1e-9), 3),
        "p99_router_vs_static": round(p["router"]["p99_ms"] / p["static"]["p99_ms"], 3),
        "mean_router_vs_lowest_rtt": round(p["router"]["mean_ms"] / p["lowest_rtt"]["mean_ms"], 3),
        "delay_p99_router_vs_static": round(p["router"]["delay_p99_ms"] / p["static"]["delay_p99_ms"], 3)}
    print(f"{len(workload)} requests over {args.minutes:g} min, seed {args.seed}; RTT ms {report['rtt_ms']}")
    print(f"workload: {json.dumps(report['workload'])}")
    print(f"{'policy':<20}{'cold':>8}{'mean ms':>10}{'p50':>9}{'p99':>9}{'p99.9':>9}{'cross-region':>14}"
          f"{'delay mean':>12}{'delay p99':>11}{'pod-hours':>11}")
    for name, r in p.items():
        print(f"{name:<20}{r['cold_share']:>8.2%}{r['mean_ms']:>10.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
              f"{r['p999_ms']:>9.1f}{r['cross_region_share']:>14.2%}{r['delay_mean_ms']:>12.1f}{r['delay_p99_ms']:>11.1f}"
              f"{r['pod_hours']:>11.1f}")
    print("targets (router cold/static <= 0.333, p99 router/static <= 0.5, mean router/lowest_rtt <= 1.10):",
          json.dumps(report["targets"]))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
