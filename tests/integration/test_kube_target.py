"""`edge-router chaos run --target kubernetes`: faults through each cluster's Kubernetes API and the
router's admin API, network faults as Chaos Mesh manifests. The lab stands in for the deployment."""
import asyncio
import json
import sys

import yaml

from chaos.lab.config import load_lab
from chaos.lab.lab import Lab
from chaos.routerproc import RouterProcess
from tests.conftest import wait_for

DRILL = """\
name: kube-faults
load: {rate: 30, duration: 6s, services: {checkout: 1}}
faults:
- {at: 1s, duration: 3s, type: scale_to_zero, cluster: us-west, service: checkout}
- {at: 1s, duration: 3s, type: kill_cluster, cluster: ap-east}
- {at: 1s, duration: 3s, type: latency, cluster: eu-central, latency: 250ms, jitter: 10ms}
- {at: 1s, duration: 3s, type: reset_peer, cluster: eu-central}
actions:
- {at: 5s, type: restart_router}
steadyState: {successRatio: 0.5, p99: 10s, window: 1s}
criteria:
- {metric: lost, max: 0}
"""


async def test_kubernetes_target_applies_faults_through_the_apis(tmp_path):
    lab = Lab(load_lab(), str(tmp_path / "lab"))
    await lab.start()
    token = "t0k3n"
    router = None
    try:
        cfg = lab.write_router_config(str(tmp_path / "cfg"))
        router = await RouterProcess(cfg, str(tmp_path / "router.log"), env={"EDGE_ROUTER_ADMIN_TOKEN": token}).start()
        drill = tmp_path / "drill.yaml"
        drill.write_text(DRILL)
        out = tmp_path / "out"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router", "chaos", "run", str(drill), "--target", "kubernetes",
            "--url", f"http://127.0.0.1:{router.port}", "--admin", f"http://127.0.0.1:{router.admin_port}",
            "--config", cfg, "--out", str(out), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**__import__("os").environ, "EDGE_ROUTER_ADMIN_TOKEN": token})
        text = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
        assert proc.returncode == 0, text
        report = json.loads((out / "report.json").read_text())
        assert report["target"] == "kubernetes" and report["sent"] > 100

        us = [p for p in lab.clusters["us-west"].api.patches if p[0] == "deployments/scale" and p[2] == "checkout"]
        replicas = [p[3]["spec"]["replicas"] for p in us]
        # Scaled to zero, then restored; in between the router may wake the skipped copy (1 replica).
        assert replicas[0] == 0 and replicas[-1] == 2 and set(replicas[1:-1]) <= {1}, replicas
        ap = lab.clusters["ap-east"].api.patches
        cordons = [p[3]["spec"]["unschedulable"] for p in ap if p[0] == "nodes"]
        assert cordons == [True, None]  # cordoned, then uncordoned
        assert any(p[0] == "pods/deletecollection" and p[2] == "app=checkout" for p in ap)

        (manifest,) = report["manifests"]
        doc = yaml.safe_load(open(manifest))
        assert doc["kind"] == "NetworkChaos" and doc["spec"]["action"] == "delay"
        assert doc["spec"]["delay"]["latency"] == "250ms" and doc["metadata"]["annotations"]["edge.router/cluster"] == "eu-central"
        assert any("reset_peer" in s for s in report["skipped"])
        assert any(a["action"] == "drain" and a["ok"] for a in report["actions"])
        import aiohttp
        async with aiohttp.ClientSession() as s:
            async def not_ready():
                async with s.get(f"http://127.0.0.1:{router.admin_port}/readyz") as r:
                    return r.status == 503
            await wait_for(not_ready, timeout_s=5, what="drained")
    finally:
        if router is not None:
            await router.stop()
        await lab.stop()
