"""Config reload: build the new config off the loop, then swap; a bad one is refused.

`ConfigSource` remembers the files a config came from and their mtimes, so a polling
watcher can notice edits, new files in a watched directory, and deletions.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable

from ..config.errors import ConfigError
from ..config.loader import load_config
from ..config.model import Config
from ..config.yamlsrc import config_files

log = logging.getLogger("router.reload")


class ConfigSource:
    def __init__(self, paths: list[str]):
        self.paths = list(paths)
        self.documents: tuple[tuple[str, str], ...] = ()  # custom resources read from a cluster
        self.extra_files: tuple[str, ...] = ()  # files the config names and the router reads (TLS pairs, CAs)
        self.stamp = self._stamp()

    def _stamp(self) -> tuple:
        out = []
        for f in (*(f for path in self.paths for f in config_files(path)), *self.extra_files):
            try:
                st = os.stat(f)
                out.append((f, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((f, None, None))
        return tuple(out)

    def changed(self) -> bool:
        new = self._stamp()
        if new != self.stamp:
            self.stamp = new
            return True
        return False

    def load(self) -> Config:
        config = load_config(*self.paths, documents=self.documents)
        tls = config.router.tls
        extra = tls.files if tls is not None else ()
        for cluster in config.clusters:
            if cluster.endpoint.tls is not None:
                extra += tuple(f for f in cluster.endpoint.tls.files if f not in extra)
        if extra != self.extra_files:  # watched from now on: a renewed certificate reloads
            self.extra_files = extra
            self.stamp = self._stamp()
        return config


def cli_overrides(listen: str | None, admin: str | None) -> frozenset[str]:
    """The Router fields the command line set (`--listen`, `--admin`): what the file says for them
    would not apply at the next start either."""
    return frozenset(name for name, flag in (("listen", listen), ("admin", admin)) if flag)


def start_only_changes(started: Config, new: Config, overridden: frozenset[str] = frozenset()) -> list[str]:
    """Fields of `new` that differ from the config the router started with but are read only at
    start (the listeners, the admin token, what runs beside the data path): they take effect at
    the next start, and a reload says so. `overridden`: Router fields a command-line flag set."""
    a, b = started.router, new.router
    out = [f"Router spec.{name}" for name, old, now in (
        ("listen", a.listen, b.listen), ("admin", a.admin, b.admin),
        ("adminToken", (a.admin_token_env, a.admin_token_file), (b.admin_token_env, b.admin_token_file)),
        ("probes.enabled", a.probes.enabled, b.probes.enabled), ("rttDecay", a.rtt_decay_s, b.rtt_decay_s),
        ("buffer", a.buffer, b.buffer), ("resources", a.resources, b.resources),
        ("accessLog", a.access_log, b.access_log), ("tls", a.tls is None, b.tls is None),
        ("proxyProtocol", a.proxy_protocol, b.proxy_protocol),
        ("httpsRedirect", a.https_redirect, b.https_redirect),
        ("http2", _http2_listening(a), _http2_listening(b)))
        if old != now and name not in overridden]
    return out


def _http2_listening(router) -> tuple[bool, bool]:
    """What of Router http2 the listeners read at start: whether it is on, and in clear text
    (maxConcurrentStreams is read by each new connection)."""
    return router.http2 is not None, router.http2 is not None and router.http2.cleartext


class Reloader:
    """Serialises reloads; `apply` swaps a good config in, a bad one is recorded and refused. Changes
    to what is read only at start, against `started` (the config the process started with), are
    kept in `next_start` and named in the answer."""

    def __init__(self, source: ConfigSource, apply: Callable[[Config], None], count: Callable[[str], None],
                 started: Config, overridden: frozenset[str] = frozenset()):
        self.source, self.apply, self.count = source, apply, count
        self.started, self.overridden = started, overridden
        self.lock = asyncio.Lock()
        self.last_error: str | None = None
        self.last_problems: list = []
        self.next_start: list[str] = []

    async def reload(self, trigger: str) -> dict:
        async with self.lock:
            try:
                config = await asyncio.to_thread(self.source.load)
            except ConfigError as exc:
                self.last_error = str(exc)
                self.last_problems = exc.problems
                self.count("error")
                for line in str(exc).splitlines():
                    log.error("config reload (%s) refused, keeping the last good config: %s", trigger, line)
                return {"ok": False, "errors": str(exc).splitlines()}
            self.apply(config)
            self.next_start = start_only_changes(self.started, config, self.overridden)
            self.last_error = None
            self.last_problems = []
            self.count("success")
            log.info("config reloaded (%s) from %s", trigger, ", ".join(config.files))
            if self.next_start:
                log.warning("config reloaded, but these changes take effect at the next start: %s",
                            ", ".join(self.next_start))
                return {"ok": True, "files": list(config.files), "next_start": self.next_start}
            return {"ok": True, "files": list(config.files)}

    async def watch(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            changed = await asyncio.to_thread(self.source.changed)
            if changed:
                await self.reload("file change")
