"""Run `edge-router serve` as a child process on ephemeral ports, its log in a file."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys


class RouterProcess:
    def __init__(self, config_dir: str, log_path: str, extra: tuple[str, ...] = (), env: dict | None = None):
        self.config_dir, self.log_path, self.extra = config_dir, log_path, extra
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.port = self.admin_port = 0
        self.log = None

    async def start(self, timeout_s: float = 30.0) -> "RouterProcess":
        self.log = open(self.log_path, "a+")
        self.log.seek(0, os.SEEK_END)
        offset = self.log.tell()
        self.proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", self.config_dir,
                                      "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", *self.extra],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while True:
            with open(self.log_path) as fh:
                fh.seek(offset)
                text = fh.read()
            m = re.search(r"serving on [\d.]+:(\d+), admin on [\d.]+:(\d+)", text)
            if m:
                self.port, self.admin_port = int(m.group(1)), int(m.group(2))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"the router exited with {self.proc.returncode} before serving:\n{text[-2000:]}")
            if loop.time() > end:
                await self.stop()
                raise RuntimeError(f"the router did not start within {timeout_s:g}s:\n{text[-2000:]}")
            await asyncio.sleep(0.05)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout_s: float) -> int | None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while self.proc.poll() is None and loop.time() < end:
            await asyncio.sleep(0.05)
        return self.proc.poll()

    async def stop(self, timeout_s: float = 25.0) -> int | None:
        """SIGTERM, wait for the drain, then SIGKILL if still there. Returns the exit code."""
        if self.proc is None:
            return None
        self.terminate()
        code = await self.wait(timeout_s)
        if code is None:
            self.proc.kill()
            code = await self.wait(5)
        if self.log is not None:
            self.log.close()
            self.log = None
        return code
