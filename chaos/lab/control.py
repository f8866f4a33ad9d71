"""The lab's control API: inject and clear faults at run time.

    POST   /faults          {"type": "blackhole", "cluster": "ap-east"}   -> 201 {"id": 1, ...}
    GET    /faults          the active faults
    DELETE /faults/{id}     revert one
    GET    /lab             clusters, their services' replicas and image caches, active toxics

Bound to 127.0.0.1 only. Faults injected here show up as windows in the demo's or drill's timeline.
"""
from __future__ import annotations

import time

from aiohttp import web

from router.obs.admin import start_site

from .. import faults as faultlib


class LabControl:
    def __init__(self, lab, on_change=None):
        self.lab = lab
        self.on_change = on_change  # (event, window) -> None: "start"/"end" with {id, label, fault}
        self.active: dict[int, dict] = {}
        self.next_id = 1
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        app = web.Application()
        app.router.add_post("/faults", self.post)
        app.router.add_get("/faults", self.list)
        app.router.add_delete("/faults/{id}", self.delete)
        app.router.add_get("/lab", self.describe)
        self.runner, self.port = await start_site(app, "127.0.0.1", 0)
        return self.port

    async def stop(self) -> None:
        for fid in list(self.active):
            await self._revert(fid)
        if self.runner is not None:
            await self.runner.cleanup()

    async def post(self, request: web.Request) -> web.Response:
        try:
            fault = await request.json()
        except ValueError:
            return web.json_response({"error": "the body must be a JSON object describing a fault"}, status=400)
        if not isinstance(fault, dict):
            return web.json_response({"error": "the body must be a JSON object describing a fault"}, status=400)
        try:
            revert = await faultlib.apply(self.lab, fault)
        except ValueError as exc:  # FaultError and bad durations
            return web.json_response({"error": str(exc)}, status=400)
        fid = self.next_id
        self.next_id += 1
        entry = {"id": fid, "fault": fault, "label": faultlib.describe(fault), "since": time.time(), "revert": revert}
        self.active[fid] = entry
        if self.on_change:
            self.on_change("start", entry)
        return web.json_response(_public(entry), status=201)

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response([_public(e) for e in self.active.values()])

    async def delete(self, request: web.Request) -> web.Response:
        try:
            fid = int(request.match_info["id"])
        except ValueError:
            fid = -1
        if fid not in self.active:
            return web.json_response({"error": f"no active fault {request.match_info['id']}"}, status=404)
        entry = await self._revert(fid)
        return web.json_response(_public(entry))

    async def describe(self, request: web.Request) -> web.Response:
        return web.json_response(self.lab.describe())

    async def _revert(self, fid: int) -> dict:
        entry = self.active.pop(fid)
        await entry["revert"]()
        if self.on_change:
            self.on_change("end", entry)
        return entry


def _public(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "revert"}
