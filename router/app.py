"""Composition root: build the router from config, start and stop it in order.

Start: load config (a bad one stops start-up with FILE:LINE errors), build the first
snapshot, listen, start admin and the config watcher. Stop (SIGTERM): stop accepting,
fail readiness, let in-flight requests finish within the drain deadline, cancel the rest.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from dataclasses import asdict

from .config.model import ClusterConfig, Config, UpstreamTls
from .config.values import parse_hostport
from .control.activator import Activator
from .control.discovery import StaticDiscovery
from .control.ejections import EjectionSharing
from .control.keepwarm import KeepWarmer
from .control.preconnect import Preconnector
from .control.kube_wake import CompositeWake, KnativeMinScaleWake, KubernetesScaleWake
from .control.kubernetes import KubernetesDiscovery
from .control.wake import HttpWake
from .control.probes import Prober
from .control.reload import ConfigSource, Reloader, cli_overrides
from .control.resources import ResourceWatcher
from .core.choice import effective_weights
from .core.snapshot import build_snapshot, pool_key
from .dataplane.context import ProxyContext
from .dataplane.listeners import serve, serve_https_redirect
from .dataplane.tls import ListenerTls, certificate_not_after, utc_text
from .obs.accesslog import AccessLog
from .obs.admin import AdminServer, explain_args, read_token
from .obs.explain import explain
from .obs.metrics import Metrics
from .openfiles import open_files_limit

log = logging.getLogger("router")


class RouterApp:
    def __init__(self, paths: list[str], listen: str | None = None, admin: str | None = None,
                 watch_interval_s: float = 1.0, metrics: Metrics | None = None, run_admin: bool = True,
                 listen_sock: socket.socket | None = None, reuse_port: bool = False, count_reloads: bool = True,
                 probes: bool | None = None, wake_trigger=None, shared: dict | None = None):
        self.source = ConfigSource(paths)
        self.config: Config = self.source.load()
        self.listen = parse_hostport(listen or self.config.router.listen)
        self.admin_addr = parse_hostport(admin or self.config.router.admin) if run_admin else ("", 0)
        self.watch_interval_s = watch_interval_s
        self.metrics = metrics or Metrics()
        self.run_admin = run_admin
        self.listen_sock = listen_sock
        self.reuse_port = reuse_port
        self.version = 0
        self.ctx: ProxyContext | None = None
        self.server = None
        self.redirect_server = None  # the HTTPS redirect listener, with httpsRedirect
        self.redirect_port = 0
        self.listener_tls: ListenerTls | None = None  # the client listener's certificates, with Router tls
        self.client_cert_expiry: dict[str, float] = {}  # cluster -> its client certificate's notAfter
        self.admin: AdminServer | None = None
        self.port = self.admin_port = 0
        self.accepting = False
        self.tasks: set[asyncio.Task] = set()
        self.stopped = asyncio.Event()
        self.probes_enabled = probes
        self.wake_trigger = wake_trigger
        self.shared = shared or {}  # a worker's tables shared with the others (ProxyContext attributes)
        self.prober: Prober | None = None
        self.keepwarm: KeepWarmer | None = None
        self.preconnector: Preconnector | None = None
        self.ejection_sharing: EjectionSharing | None = None  # with serve --workers
        self.kube: KubernetesDiscovery | None = None
        self.resources: ResourceWatcher | None = None
        self.discovery = []
        count = (lambda r: self.metrics.reloads.labels(r).inc()) if count_reloads else (lambda r: None)
        self.reloader = Reloader(self.source, self.apply, count, started=self.config,
                                 overridden=cli_overrides(listen, admin))

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.version = 1
        self.ctx = ProxyContext(loop, build_snapshot(self.config, self.version), self.metrics)
        self.ctx.use_shared(self.shared)  # before the listener opens: every connection and request is counted
        self.metrics.config_version.set(self.version)
        self._note_client_certificates(self.config)
        if self.config.router.access_log is not None:
            self.ctx.access_log = AccessLog(loop, self.config.router.access_log, self.metrics.access_log_dropped.inc)
            if self.ctx.fast is not None:
                self.ctx.fast.configure()  # (every request is logged: the fast lane is off)
        if self.run_admin:
            token = read_token(self.config.router.admin_token_env, self.config.router.admin_token_file)
            self.admin = self.admin_server({"reload": lambda: self.reloader.reload("admin"), "drain": self.drain},
                                           token)
            self.admin_port = await self.admin.start(*self.admin_addr)
        if self.config.router.tls is not None:
            self.listener_tls = ListenerTls(self.config.router.tls, self.metrics.tls_not_after, self.ctx.http2_alpn)
        tls = self.listener_tls
        self.server = await serve(self.ctx, *self.listen, sock=self.listen_sock, reuse_port=self.reuse_port,
                                  tls_context=(lambda: tls.context) if tls is not None else None)
        self.port = self.server.sockets[0].getsockname()[1]
        redirect = self.config.router.https_redirect
        if redirect is not None:
            self.redirect_server = await serve_https_redirect(self.ctx, redirect, *parse_hostport(redirect.listen),
                                                              reuse_port=self.reuse_port)
            self.redirect_port = self.redirect_server.sockets[0].getsockname()[1]
        self.accepting = True
        self._start_control()
        if self.watch_interval_s > 0:
            self._spawn(self.reloader.watch(self.watch_interval_s))
        if not self.run_admin:  # a worker: its series are read from files by the supervisor
            self._spawn(self._flush_metrics())

    def admin_server(self, actions: dict, token: str | None) -> AdminServer:
        """This router's admin endpoints; a worker's has no actions and no token (see workers.py)."""
        return AdminServer(self.metrics.registry, self.state, self.ready, actions, token,
                           before_scrape=self.metrics.flush,
                           explain=lambda query: explain(self.ctx, *explain_args(query)))

    async def _flush_metrics(self) -> None:
        try:
            while True:
                await asyncio.sleep(1.0)
                self.metrics.flush()
        finally:
            self.metrics.flush()

    def _start_control(self) -> None:
        """Off-path inputs to the policy: active probes, discovery, and the reconcile tick."""
        ctx = self.ctx
        settings = lambda: ctx.settings  # noqa: E731 - always the live config
        enabled = self.probes_enabled if self.probes_enabled is not None else self.config.router.probes.enabled
        if enabled:
            def on_result(cluster, ok, connect_s, http_s):
                self.metrics.probes.labels(cluster, "ok" if ok else "fail").inc()
            self.prober = Prober(ctx.policy, lambda: ctx.snapshot.config.clusters,
                                 lambda: settings().probes.interval_s, lambda: settings().probes.timeout_s, on_result,
                                 dns=ctx.pool.dns, shared=ctx.shared_probes)
            self.prober.sync()
        self.kube = KubernetesDiscovery(lambda: ctx.snapshot.config, ctx.policy.warmth, ctx.clock)
        self.kube.start(asyncio.get_running_loop())
        self.discovery = [StaticDiscovery(lambda: ctx.snapshot.config, ctx.policy.warmth), self.kube]
        watch = self.config.router.resources
        if watch is not None:
            self.resources = ResourceWatcher(watch, lambda _: self._spawn(self._reload_resources()),
                                             asyncio.get_running_loop())
            self.resources.start()
        self.knative_wake = KnativeMinScaleWake(self.kube)
        kube_wakes = [KubernetesScaleWake(self.kube), self.knative_wake]  # for clusters with a provider
        ctx.activator = Activator(ctx, CompositeWake(kube_wakes, self.wake_trigger or HttpWake()))
        self.keepwarm = KeepWarmer(ctx, ctx.activator)
        ctx.keep_warm = self.keepwarm.policy
        self.keepwarm.start(asyncio.get_running_loop())
        self.preconnector = Preconnector(ctx)
        self.preconnector.start(asyncio.get_running_loop())
        if ctx.shared_ejections is not None:
            self.ejection_sharing = EjectionSharing(ctx, ctx.shared_ejections)
            self.ejection_sharing.start(asyncio.get_running_loop())
        self._spawn(self._reconcile())

    async def _reconcile(self, interval_s: float = 1.0) -> None:
        while True:
            now = self.ctx.clock()
            for provider in self.discovery:
                provider.refresh(now)
            for cluster in self.ctx.snapshot.config.clusters:
                self.metrics.cluster_healthy.labels(cluster.name).set(
                    1 if self.ctx.health.is_healthy(cluster.name, now) else 0)
                rtt = self.ctx.policy.rtt.rtt(cluster.name)
                if rtt is not None:
                    self.metrics.cluster_rtt.labels(cluster.name).set(rtt)
            await asyncio.sleep(interval_s)

    async def _reload_resources(self) -> None:
        """Custom resources changed: reload with them, then tell each resource how it went."""
        self.source.documents = self.resources.documents()
        await self.reloader.reload("resources")
        await asyncio.to_thread(self.resources.write_status, list(self.reloader.last_problems))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: self._spawn(self.stop()))
        loop.add_signal_handler(signal.SIGINT, lambda: self._spawn(self.stop()))
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reloader.reload("SIGHUP")))

    async def stop(self) -> None:
        """Stop accepting, fail readiness, drain in-flight requests within the deadline."""
        if not self.accepting and self.stopped.is_set():
            return
        self.accepting = False
        deadline_s = self.config.router.timeouts.drain_s
        for server in (self.server, self.redirect_server):
            if server is not None:
                server.close()
        self.ctx.start_drain()
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        activator = self.ctx.activator
        held_until = activator.latest_deadline() if activator is not None else None
        if held_until is not None:  # held requests are served until released or their own deadline
            end = max(end, loop.time() + (held_until - self.ctx.clock()) + 0.1)
        while self.ctx.connections and loop.time() < end:
            await asyncio.sleep(0.02)
        for conn in list(self.ctx.connections):
            conn.abort()
        if self.ctx.connections:
            log.warning("drain deadline passed with %d connections open", len(self.ctx.connections))
        if self.preconnector is not None:  # before the pool closes: no connection is handed to it after
            self.preconnector.stop()
        self.ctx.pool.close_all()
        if self.ctx.fast is not None:
            self.ctx.fast.close()
        for side in (*self.ctx.mirrors, *self.ctx.auth_checks):
            side.abort()
        for opening in list(self.ctx.openings):
            opening.abort()
        if self.prober is not None:
            self.prober.stop()
        if self.ctx.activator is not None:
            self.ctx.activator.stop()
        for loop_ in (self.keepwarm, self.ejection_sharing):
            if loop_ is not None:
                loop_.stop()
        if self.resources is not None:
            self.resources.stop()
        if self.kube is not None:
            self.kube.stop()
        for task in list(self.tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self.admin is not None:
            await self.admin.stop()
        if self.ctx.access_log is not None:
            await self.ctx.access_log.close()  # the last lines, answered during the drain
        self.stopped.set()

    # --- reload / drain -----------------------------------------------------------------
    def apply(self, config: Config) -> None:
        self.version += 1
        snapshot = build_snapshot(config, self.version)
        self.config = config
        self.ctx.swap(snapshot)
        if self.prober is not None:
            self.prober.sync()
        if self.kube is not None:
            self.kube.start(asyncio.get_running_loop())  # providers for Clusters given or losing spec.kubernetes
        self._note_client_certificates(config)
        if self.listener_tls is not None and config.router.tls is not None:  # new handshakes get the files as they are
            self.listener_tls.reload(config.router.tls)

    def _upstream_tls_state(self, cluster: ClusterConfig) -> dict | None:
        """How the router speaks TLS to the cluster: the CAs, the client certificate and its expiry (as
        read when the config was applied), the name."""
        ep = cluster.endpoint
        if ep.scheme != "https":
            return None
        tls = ep.tls or UpstreamTls()
        return {"ca_file": tls.ca_file or "system", "cert_file": tls.cert_file,
                "server_name": tls.server_name or ep.host,
                "cert_not_after": utc_text(self.client_cert_expiry.get(cluster.name))}

    def _rate_limit_state(self, split) -> dict | None:
        """A route's limit and how many buckets (keys) it holds (in the table the workers share, with
        `serve --workers`)."""
        if split.rate_limit is None:
            return None
        return {**asdict(split.rate_limit), "buckets": self.ctx.rate_limiter(split).count(),
                "shared": self.ctx.shared_buckets is not None}

    def _note_client_certificates(self, config: Config) -> None:
        """Each cluster's client certificate (mutual TLS) expiry, read once per config applied: kept for
        /debug/state, in the metrics, and warned of once passed (an expired one fails every new connection
        to that cluster)."""
        self.client_cert_expiry = {}
        for cluster in config.clusters:
            tls = cluster.endpoint.tls
            not_after = certificate_not_after(tls.cert_file) if tls is not None and tls.cert_file else None
            if not_after is not None:
                self.client_cert_expiry[cluster.name] = not_after
                self.metrics.upstream_tls_not_after.labels(cluster.name).set(not_after)
                if not_after <= time.time():
                    log.warning("client certificate %s for cluster %s has expired: the cluster will refuse it",
                                tls.cert_file, cluster.name)

    async def drain(self) -> dict:
        self.ctx.start_drain()
        return {"ok": True, "draining": True}

    def ready(self) -> bool:
        return self.accepting and not self.ctx.draining

    def state(self) -> dict:
        ctx = self.ctx
        now = ctx.clock()
        snap = ctx.snapshot
        rtt = ctx.policy.rtt
        clusters = {c.name: {"endpoint": str(c.endpoint), "labels": dict(c.labels),
                             "health": ctx.health.describe(c.name, now), "rtt_s": rtt.rtt(c.name),
                             "connect_s": rtt.connect_time(c.name), "inflight": ctx.inflight.get(c.name, 0),
                             "max_requests": c.max_requests, "tls": self._upstream_tls_state(c),
                             "preconnect": c.preconnect, "idle_connections": ctx.pool.idle_count(pool_key(c.endpoint)),
                             "max_requests_per_connection": c.max_requests_per_connection,
                             "max_connection_age_s": c.max_connection_age_s,
                             "last_probe": self.prober.last.get(c.name) if self.prober else None}
                    for c in snap.config.clusters}
        shared = ctx.shared_inflight
        if shared is not None:  # with serve --workers: the other workers' requests to limited clusters
            for name in ctx.limited_clusters:
                clusters[name]["inflight_other_workers"] = shared.get(name)
        routes = []
        for split in snap.config.splits:
            route = snap.named.get(split.name)
            eff = effective_weights(route, ctx.health, now) if route else {}
            total = sum(b.weight for b in split.backends) or 1.0
            routes.append({"name": split.name, "kind": split.kind, "hosts": list(split.hosts),
                           "pathPrefix": split.path_prefix, "pathRegex": split.path_regex, "maxRTT_s": split.max_rtt_s,
                           "source": split.source, "timeouts": asdict(split.timeouts) if split.timeouts else None,
                           "rate_limit": self._rate_limit_state(split),
                           "retry": {"codes": sorted(split.retry.codes), "attempts": split.retry.attempts,
                                     "backoff_s": split.retry.backoff_s}
                           if split.retry else None,
                           "mirrors": [asdict(m) for m in split.mirrors],
                           "source_ranges": {"allow": [str(n) for n in split.source_ranges.allow],
                                             "deny": [str(n) for n in split.source_ranges.deny]}
                           if split.source_ranges else None,
                           "match": asdict(split.match) if split.match else None,
                           "session_persistence": asdict(split.session) if split.session else None,
                           "cors": asdict(split.cors) if split.cors else None,
                           "external_auth": asdict(split.auth) if split.auth else None,
                           "direct_response": asdict(split.direct) if split.direct else None,
                           "fault": asdict(split.fault) if split.fault else None,
                           "clusters": {b.cluster: {"configured_weight": b.weight,
                                                    "configured_percent": round(b.weight / total * 100, 2),
                                                    "effective_percent": round(eff.get(b.cluster, 0.0), 2),
                                                    "healthy": ctx.health.is_healthy(b.cluster, now)}
                                        for b in split.backends}})
        services = {}
        for svc in snap.config.services:
            route = next((r for r in (snap.route_for(h, "/") for h in svc.hosts) if r is not None), None)
            if route is not None:
                # expected latency = rtt + server time + cold-start estimate (when not warm) + queueing
                services[svc.name] = {b.cluster: ctx.policy.breakdown(svc.name, b, now) for b in route.backends}
        return {"config_version": snap.version, "files": list(snap.config.files), "ready": self.ready(),
                "open_connections": len(ctx.connections), "last_reload_error": self.reloader.last_error,
                "open_files_limit": open_files_limit(), "next_start": self.reloader.next_start,
                "dns": ctx.pool.dns.describe(), "tls": self.listener_tls.state() if self.listener_tls else None,
                "https_redirect_port": self.redirect_port or None,
                "proxy_protocol": self.config.router.proxy_protocol,
                "max_connections": ctx.max_connections,
                "fast_lane": ctx.fast.describe() if ctx.fast is not None else {"enabled": False,
                                                                              "off_reason": "not compiled"},
                "compression": ({"level": ctx.compression.level, "min_length": ctx.compression.min_length,
                                 "types": sorted(ctx.compression.types)} if ctx.compression else None),
                "slow_start": asdict(ctx.health.slow_start) if ctx.health.slow_start else None,
                "pin_header": {"name": ctx.settings.pin_header.name,
                               "allow": [str(n) for n in ctx.settings.pin_header.allow]}
                if ctx.settings.pin_header else None,
                "outlier_detection": asdict(ctx.health.policy),
                "clusters": clusters, "routes": routes, "services": services,
                "held": ({svc.name: ctx.activator.buffer.held(svc.name) for svc in snap.config.services}
                         if ctx.activator is not None else {}),
                "released_in_flight": dict(ctx.activator.out) if ctx.activator is not None else {},
                "retry_budget": {"active_requests": ctx.retry_budget.active_requests,
                                 "active_retries": ctx.retry_budget.active_retries}}


async def run(paths: list[str], listen: str | None, admin: str | None) -> int:
    app = RouterApp(paths, listen, admin)
    await app.start()
    app.install_signals()
    log.info("serving on %s:%d%s%s, admin on %s:%d; open files limit %d", app.listen[0], app.port,
             (" (TLS)" if app.listener_tls else "") + (" (PROXY protocol)" if app.config.router.proxy_protocol else ""),
             f", redirecting to https on port {app.redirect_port}" if app.redirect_server else "",
             app.admin_addr[0], app.admin_port, open_files_limit())
    fast = app.ctx.fast
    if fast is None:
        log.warning("the fast lane is not compiled (no C compiler at install?): every request takes the Python path")
    elif fast.off_reason is not None:
        log.info("fast lane off: %s (every request takes the Python path)", fast.off_reason)
    await app.stopped.wait()
    return 0
