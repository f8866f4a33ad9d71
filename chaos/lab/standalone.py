"""`edge-router chaos lab`: the lab on its own, for a router you run yourself.

Starts the clusters of a lab file, writes the router config that points at them (Clusters with
their relays and kubeconfigs, Services, the seed TrafficSplit, a Router document) and serves the
control API for faults until Ctrl-C.
"""
from __future__ import annotations

import asyncio
import os
import signal

from .config import load_lab
from .control import LabControl
from .lab import Lab


async def run_lab(lab_file: str | None, config_out: str) -> int:
    os.makedirs(config_out, exist_ok=True)
    lab = Lab(load_lab(lab_file), config_out)  # kubeconfigs go beside the config that names them
    control = LabControl(lab)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await lab.start()
        port = await control.start()
        lab.write_router_config(config_out)
        print(f"edge-router lab: {len(lab.clusters)} clusters up; router config in {os.path.abspath(config_out)}")
        for name, c in lab.clusters.items():
            print(f"  {name}: ingress {c.endpoint} ({c.spec.rtt_ms:g} ms RTT), Kubernetes API http://127.0.0.1:{c.api.port}")
        print(f"  run a router:  edge-router serve --config {config_out} --listen 127.0.0.1:8080")
        print(f"  faults:        curl -XPOST 127.0.0.1:{port}/faults -d '{{\"type\": \"blackhole\", \"cluster\": \"ap-east\"}}'")
        print(f"                 curl 127.0.0.1:{port}/faults; curl -XDELETE 127.0.0.1:{port}/faults/1")
        print("  Ctrl-C stops the lab", flush=True)
        await stop.wait()
        return 0
    finally:
        await control.stop()
        await lab.stop()
