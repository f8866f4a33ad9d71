"""`serve --workers N`: a supervisor and N worker processes sharing the port (SO_REUSEPORT).

The supervisor validates config, starts the workers, runs the admin server and merges the
workers' metrics (prometheus_client multiprocess mode). Reload: the supervisor validates the
new config first and only then sends SIGHUP to every worker; a bad config is refused once,
with its FILE:LINE errors, and counted once. SIGTERM drains every worker; a worker that dies
unexpectedly is replaced, after a pause that doubles (0.5 s up to 30 s) while replacements keep dying
within RESTART_STABLE_S of their start, so a worker that cannot start does not become a busy loop.

Each worker serves its read-only admin endpoints (/debug/state, /debug/route) on a Unix socket in the
supervisor's private directory (mode 0700); the supervisor's /debug/route asks one worker and its
/debug/state gathers every worker's, since load and passive health are each worker's own. Limits are not:
the supervisor holds tables in shared memory (dataplane/sharedmem.py) that the workers count in together,
so a route's rate limit, an address's maxConnectionsPerClient and a cluster's maxRequests hold in total
whatever the number of workers, a cluster one worker ejects is out at all of them, the hold queues' bounds
count every worker's held requests, and the workers take turns probing a cluster and share the results;
it clears a dead worker's part.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile

log = logging.getLogger("router.workers")

RESTART_FIRST_S, RESTART_MAX_S = 0.5, 30.0
RESTART_STABLE_S = 5.0  # a worker that lived this long resets the restart pause
ASK_TIMEOUT_S = 2.0  # a worker's answer on its debug socket
SOCKET_PATH_MAX = 100  # bytes of a Unix socket path (108 with the terminating NUL on Linux)


def run_workers(paths: list[str], listen: str | None, admin: str | None, n: int) -> int:
    mp_dir = tempfile.mkdtemp(prefix="edge-router-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir  # before prometheus_client is imported here
    try:
        import uvloop
        return uvloop.run(Supervisor(paths, listen, admin, n, mp_dir).run())
    finally:
        shutil.rmtree(mp_dir, ignore_errors=True)


class Supervisor:
    def __init__(self, paths, listen, admin, n, mp_dir):
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        from .config.values import parse_hostport
        from .control.reload import ConfigSource, Reloader, cli_overrides
        from .dataplane.sharedclients import create_table as create_clients_table
        from .dataplane.sharedvalues import create_table as create_values_table
        from .dataplane.sharedlimit import create_table
        from .dataplane.sharedprobes import create_table as create_probes_table
        from .obs.metrics import Metrics

        self.paths, self.n, self.mp_dir = paths, n, mp_dir
        self.source = ConfigSource(paths)
        self.config = self.source.load()
        self.listen = parse_hostport(listen or self.config.router.listen)
        self.admin_addr = parse_hostport(admin or self.config.router.admin)
        self.metrics = Metrics()  # the supervisor's own series (reloads) are written to mp_dir too
        self.merged = CollectorRegistry()
        MultiProcessCollector(self.merged, path=mp_dir)
        self.generate = lambda: generate_latest(self.merged)
        self.reloader = Reloader(self.source, self._apply, lambda r: self.metrics.reloads.labels(r).inc(),
                                 started=self.config, overridden=cli_overrides(listen, admin))
        self.workers: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.draining = False
        self.placeholder: socket.socket | None = None
        self.port = 0
        self.restart_pause_s = 0.0
        self.spawned = 0
        self.rate_limit_fd = create_table()  # the routes' rate-limit buckets, shared by every worker
        self.clients_fd = create_clients_table(n)  # each worker's open connections per client address
        self.inflight_fd = create_values_table(n)  # each worker's requests in flight per limited cluster
        self.ejections_fd = create_values_table(n)  # each worker's ejections (until when, ms) per cluster
        self.probes_fd = create_probes_table()  # whose turn it is to probe a cluster, and the last result
        self.held_fd = create_values_table(n)  # each worker's requests held per service (and in all)
        self.shared_fds = (self.rate_limit_fd, self.clients_fd, self.inflight_fd, self.ejections_fd, self.probes_fd,
                           self.held_fd)
        self.free_slots = set(range(n))  # worker regions no running worker holds (tables of regions)

    def _bind_port(self) -> None:
        """Resolve port 0 once so every worker binds the same port."""
        host, port = self.listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        self.port = sock.getsockname()[1]
        self.placeholder = sock  # bound, never listening: holds the port without taking connections

    async def _spawn(self) -> None:
        host = self.listen[0]
        cmd = [sys.executable, "-m", "router", "serve", "--worker", "--listen", f"{host}:{self.port}"]
        for p in self.paths:
            cmd += ["--config", p]
        self.spawned += 1
        debug_socket = os.path.join(self.mp_dir, f"worker-{self.spawned}.sock")
        if len(debug_socket.encode()) <= SOCKET_PATH_MAX:
            cmd += ["--debug-socket", debug_socket]
        else:
            debug_socket = None
        slot = min(self.free_slots)  # its region of the shared tables, taken before any await
        self.free_slots.discard(slot)
        cmd += ["--shared-fds", ",".join(map(str, self.shared_fds)), "--worker-slot", str(slot)]
        try:
            proc = await asyncio.create_subprocess_exec(*cmd, env=os.environ.copy(), stdout=subprocess_out(),
                                                        stderr=None, pass_fds=self.shared_fds)
        except BaseException:
            self.free_slots.add(slot)
            raise
        proc.slot = slot
        proc.started_at = asyncio.get_running_loop().time()
        proc.debug_socket = debug_socket
        self.workers[proc.pid] = proc
        asyncio.get_running_loop().create_task(self._watch(proc))

    async def _watch(self, proc) -> None:
        line = await proc.stdout.readline()  # "ready" once listening
        if line.strip() != b"ready":
            log.error("worker %d failed to start", proc.pid)
        proc.ready = True
        rc = await proc.wait()
        from prometheus_client import multiprocess

        from .dataplane import sharedclients, sharedvalues
        multiprocess.mark_process_dead(proc.pid, self.mp_dir)
        sharedclients.clear_region(self.clients_fd, proc.slot)  # its connections and requests died with it
        sharedvalues.clear_region(self.inflight_fd, proc.slot)
        sharedvalues.clear_region(self.ejections_fd, proc.slot)
        sharedvalues.clear_region(self.held_fd, proc.slot)
        self.free_slots.add(proc.slot)
        self.workers.pop(proc.pid, None)
        if self.stopping:
            return
        lived_s = asyncio.get_running_loop().time() - proc.started_at
        self.restart_pause_s = (0.0 if lived_s >= RESTART_STABLE_S
                                else min(max(2 * self.restart_pause_s, RESTART_FIRST_S), RESTART_MAX_S))
        self.metrics.worker_restarts.inc()
        log.error("worker %d exited with %s after %.1f s; starting a new one%s", proc.pid, rc, lived_s,
                  f" in {self.restart_pause_s:g} s" if self.restart_pause_s else "")
        if self.restart_pause_s:
            await asyncio.sleep(self.restart_pause_s)  # a supervisor's pause, not a wait on a condition
        if not self.stopping:
            await self._spawn()

    def _apply(self, config) -> None:
        self.config = config
        for proc in list(self.workers.values()):
            proc.send_signal(signal.SIGHUP)

    async def _drain(self) -> dict:
        self.draining = True
        for proc in list(self.workers.values()):
            proc.send_signal(signal.SIGUSR1)
        return {"ok": True, "draining": True}

    def _ready(self) -> bool:
        return (not self.stopping and not self.draining and len(self.workers) == self.n
                and all(getattr(p, "ready", False) for p in self.workers.values()))

    async def _state(self) -> dict:
        procs = [self.workers[pid] for pid in sorted(self.workers)]
        answers = await asyncio.gather(*(self._ask(proc, "/debug/state", []) for proc in procs))
        per_worker = {str(proc.pid): body if status == 200 else {"error": body.get("error", f"status {status}")}
                      for proc, (status, body) in zip(procs, answers)}
        return {"workers": sorted(self.workers), "ready": self._ready(), "files": list(self.config.files),
                "restart_pause_s": self.restart_pause_s, "next_start": self.reloader.next_start,
                "last_reload_error": self.reloader.last_error,
                "routes": [{"name": s.name, "hosts": list(s.hosts),
                            "clusters": {b.cluster: {"configured_weight": b.weight} for b in s.backends}}
                           for s in self.config.splits],
                "worker_state": per_worker}

    async def _explain(self, query) -> dict:
        """/debug/route answered by one worker: the one `worker=PID` names, else the lowest ready pid."""
        from .obs.admin import Unavailable
        from .obs.explain import ExplainError
        ready = [pid for pid in sorted(self.workers) if getattr(self.workers[pid], "ready", False)]
        named = query.get("worker")
        if named is not None:
            if not named.isdigit() or int(named) not in self.workers:
                raise ExplainError(f"worker={named}: not one of the workers {sorted(self.workers)}")
            ready = [int(named)]
        if not ready:
            raise Unavailable("no worker is ready")
        proc = self.workers[ready[0]]
        status, body = await self._ask(proc, "/debug/route", [(k, v) for k, v in query.items() if k != "worker"])
        if status == 400:
            raise ExplainError(body.get("error", "bad query"))
        if status != 200:
            raise Unavailable(f"worker {proc.pid}: {body.get('error', f'status {status}')}")
        return {"worker": proc.pid, **body}

    async def _ask(self, proc, path: str, params: list) -> tuple[int, dict]:
        """(status, JSON body) of a worker's debug endpoint; (503, error) when it cannot answer."""
        import aiohttp
        if proc.debug_socket is None:
            return 503, {"error": f"the supervisor's directory path is too long for a Unix socket: {self.mp_dir}"}
        try:
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=proc.debug_socket),
                                             timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT_S)) as session:
                async with session.get(f"http://worker{path}", params=params) as r:
                    return r.status, await r.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            return 503, {"error": f"worker {proc.pid} did not answer: {exc or type(exc).__name__}"}

    async def run(self) -> int:
        from .obs.admin import AdminServer, read_token
        self._bind_port()
        for _ in range(self.n):
            await self._spawn()
        token = read_token(self.config.router.admin_token_env, self.config.router.admin_token_file)
        admin = AdminServer(self.merged, self._state, self._ready,
                            {"reload": lambda: self.reloader.reload("admin"), "drain": self._drain}, token,
                            collect=self.generate, explain=self._explain)
        admin_port = await admin.start(*self.admin_addr)
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, done.set)
        loop.add_signal_handler(signal.SIGINT, done.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reloader.reload("SIGHUP")))
        watcher = loop.create_task(self.reloader.watch(1.0))
        log.info("serving on %s:%d%s, admin on %s:%d (%d workers)", self.listen[0], self.port,
                 " (TLS)" if self.config.router.tls else "", self.admin_addr[0], admin_port, self.n)
        await done.wait()
        self.stopping = True
        watcher.cancel()
        for proc in list(self.workers.values()):
            proc.send_signal(signal.SIGTERM)
        deadline = self.config.router.timeouts.drain_s + 5
        for proc in list(self.workers.values()):
            try:
                await asyncio.wait_for(proc.wait(), deadline)
            except asyncio.TimeoutError:
                proc.kill()
        await admin.stop()
        if self.placeholder:
            self.placeholder.close()
        for fd in self.shared_fds:
            os.close(fd)
        return 0


def subprocess_out():
    return asyncio.subprocess.PIPE


async def run_worker(paths: list[str], listen: str, debug_socket: str | None = None,
                     shared_fds: tuple[int, ...] | None = None, slot: int = 0) -> int:
    """One worker: the data path on a SO_REUSEPORT socket; its read-only admin endpoints on
    `debug_socket` for the supervisor, no admin port of its own. `shared_fds`: the tables it shares with
    the other workers: rate-limit buckets it counts in, and (in its `slot`'s region) its open connections
    per client address, its requests in flight per limited cluster and its outlier ejections, which it
    publishes, and its requests held per service; and the clusters' probe turns and results."""
    from .app import RouterApp
    from .dataplane.sharedclients import SharedClientCounts
    from .dataplane.sharedvalues import SharedValues
    from .dataplane.sharedlimit import SharedBuckets
    from .dataplane.sharedprobes import SharedProbes
    shared = {}
    if shared_fds is not None:
        buckets, clients, inflight, ejections, probes, held = shared_fds
        shared = {"shared_buckets": SharedBuckets(buckets), "shared_clients": SharedClientCounts(clients, slot),
                  "shared_inflight": SharedValues(inflight, slot),
                  "shared_ejections": SharedValues(ejections, slot), "shared_probes": SharedProbes(probes),
                  "shared_held": SharedValues(held, slot)}
    app = RouterApp(paths, listen, None, run_admin=False, reuse_port=True, count_reloads=False,
                    watch_interval_s=0, shared=shared)
    await app.start()
    debug = None
    if debug_socket is not None:
        debug = app.admin_server({}, None)
        await debug.start_unix(debug_socket)
    app.install_signals()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: app.ctx.start_drain())
    parent = os.getppid()

    async def orphan_check():
        while os.getppid() == parent:
            await asyncio.sleep(1)
        await app.stop()
    app._spawn(orphan_check())
    print("ready", flush=True)
    await app.stopped.wait()
    if debug is not None:
        await debug.stop()
        with contextlib.suppress(OSError):
            os.unlink(debug_socket)
    return 0
