"""The router's Kubernetes provider against the API double, through the official client."""
import asyncio
import textwrap

import pytest

from chaos.kubeapi import KubeApiDouble
from router.control.kubernetes import image_cached, normalise_image
from router.core.warmth import Warmth
from tests.conftest import cluster_docs, raw_request, router_doc, wait_for

IMAGE = "registry.example.com/shop/app:1.4"


@pytest.fixture
async def kube():
    double = KubeApiDouble(bookmark_interval_s=0.2)
    await double.start()
    yield double
    await double.stop()


def config(kubeconfig: str, backend_port: int, replicas_ready: bool = False) -> str:
    docs = cluster_docs({"a": backend_port}).replace(
        f"  endpoint: http://127.0.0.1:{backend_port}\n",
        f"  endpoint: http://127.0.0.1:{backend_port}\n  kubernetes: {{kubeconfig: {kubeconfig}}}\n")
    return docs + textwrap.dedent("""\
        ---
        apiVersion: edge.router/v1alpha1
        kind: Service
        metadata: {name: shop}
        spec:
          hosts: [shop.example.com]
          containerConcurrency: 10
          holdLimit: 10s
          workload: {kind: Deployment, namespace: shop, name: app}
        ---
        apiVersion: edge.router/v1alpha1
        kind: TrafficSplit
        metadata: {name: s}
        spec:
          service: shop
          clusters: [{name: a, weight: 1}]
        """) + router_doc(decisionHeader=True)


def test_image_matching_by_tag_and_digest():
    assert normalise_image("nginx") == "docker.io/library/nginx:latest"
    assert normalise_image("bitnami/redis:7") == "docker.io/bitnami/redis:7"
    assert normalise_image("localhost:5000/app") == "localhost:5000/app:latest"
    names = {"registry.example.com/shop/app@sha256:abc", "registry.example.com/shop/app:1.4"}
    assert image_cached(IMAGE, names) is True
    assert image_cached("registry.example.com/shop/app:1.5", names) is False
    assert image_cached("registry.example.com/shop/app@sha256:abc", names) is True
    assert image_cached("docker.io/library/nginx:latest", {"nginx:latest"}) is True
    assert image_cached(None, names) is None


async def test_scale_up_turns_warm_and_image_eviction_turns_cold(kube, backends, router, tmp_path):
    (b,) = await backends("a")
    kube.set_deployment("shop", "app", replicas=0, ready=0, image=IMAGE)
    kube.set_node_images("node-1", [[IMAGE, "registry.example.com/shop/app@sha256:abc"]])
    app = await router(config(kube.kubeconfig(str(tmp_path)), b.port))
    warmth, clock = app.ctx.policy.warmth, app.ctx.clock
    await wait_for(lambda: warmth.warmth("shop", "a", clock()) == Warmth.CACHED, timeout_s=10, what="CACHED")
    kube.set_deployment("shop", "app", replicas=1, ready=1, image=IMAGE)  # one watch event
    await wait_for(lambda: warmth.warmth("shop", "a", clock()) == Warmth.WARM, timeout_s=5, what="WARM")
    assert warmth.get("shop", "a").capacity == 10
    kube.set_deployment("shop", "app", replicas=0, ready=0, image=IMAGE)
    await wait_for(lambda: warmth.warmth("shop", "a", clock()) == Warmth.CACHED, timeout_s=5, what="CACHED again")
    kube.set_node_images("node-1", [["registry.example.com/other:2"]])  # the image was evicted
    await wait_for(lambda: warmth.warmth("shop", "a", clock()) == Warmth.COLD, timeout_s=5, what="COLD")


async def test_watch_expiry_relists_and_outage_turns_stale_then_recovers(kube, backends, router, tmp_path):
    (b,) = await backends("a")
    kube.set_deployment("shop", "app", replicas=1, ready=1, image=IMAGE)
    app = await router(config(kube.kubeconfig(str(tmp_path)), b.port))
    warmth, clock = app.ctx.policy.warmth, app.ctx.clock
    warmth.stale_after_s = 1.0  # the 30 s default, shortened for the test
    await wait_for(lambda: warmth.warmth("shop", "a", clock()) == Warmth.WARM, timeout_s=10, what="WARM")
    lists = kube.lists["deployments"]
    kube.set_deployment("shop", "app", replicas=0, ready=0, image=IMAGE)
    kube.compact()  # watches end and history is gone: the reconnect gets 410 and must relist to see the change
    await wait_for(lambda: warmth.get("shop", "a").ready_replicas == 0, timeout_s=15, what="change seen after 410")
    assert kube.gone >= 1 and kube.lists["deployments"] > lists
    kube.outage = True
    await wait_for(lambda: warmth.warmth("shop", "a", clock()) == Warmth.UNKNOWN, timeout_s=5, what="stale")
    await wait_for(lambda: app.kube.errors, timeout_s=5, what="the outage reported")
    kube.set_deployment("shop", "app", replicas=2, ready=2, image=IMAGE)
    kube.outage = False
    await wait_for(lambda: warmth.warmth("shop", "a", clock()) == Warmth.WARM, timeout_s=15, what="relisted")
    assert warmth.get("shop", "a").ready_replicas == 2


async def test_forbidden_names_the_missing_permission(kube, backends, router, tmp_path):
    (b,) = await backends("a")
    kube.forbidden.add("nodes")
    kube.set_deployment("shop", "app", replicas=1, ready=1, image=IMAGE)
    app = await router(config(kube.kubeconfig(str(tmp_path)), b.port))
    await wait_for(lambda: app.kube.errors.get(("a", "nodes")), timeout_s=10, what="403 reported")
    message = app.kube.errors[("a", "nodes")]
    assert "lacks list/watch on nodes" in message and 'cannot list resource "nodes"' in message


async def test_burst_on_a_scaled_to_zero_deployment_patches_scale_exactly_once(kube, backends, router, tmp_path):
    (b,) = await backends("a")
    b.status = 503  # the ingress has no endpoints while the Deployment is at zero
    kube.set_deployment("shop", "app", replicas=0, ready=0, image=IMAGE)
    kube.set_node_images("node-1", [[IMAGE]])
    app = await router(config(kube.kubeconfig(str(tmp_path)), b.port))
    warmth, clock = app.ctx.policy.warmth, app.ctx.clock
    await wait_for(lambda: warmth.warmth("shop", "a", clock()) == Warmth.CACHED, timeout_s=10, what="CACHED")

    async def scaler():  # the cluster: once scaled, the pod is ready after a short cold start
        await wait_for(lambda: kube.patches, timeout_s=5, what="scale patch")
        await asyncio.sleep(0.3)
        b.status = 200
        kube.set_deployment("shop", "app", replicas=1, ready=1, image=IMAGE)
    task = asyncio.create_task(scaler())
    req = b"GET /x HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n"
    results = await asyncio.gather(*[raw_request(app.port, req, timeout_s=8) for _ in range(30)])
    await task
    assert all(r.startswith(b"HTTP/1.1 200") for r in results), [r[:40] for r in results if not r.startswith(b"HTTP/1.1 200")]
    assert kube.patches == [("deployments/scale", "shop", "app", {"spec": {"replicas": 1}})]
    assert len(b.seen) == 30


async def test_a_reload_starts_replaces_and_stops_providers(kube, backends, router, tmp_path):
    """spec.kubernetes given, changed and taken away by reloads: watched from the reload on, the old
    provider's view forgotten (and its late updates dropped) when its access changes."""
    (b,) = await backends("a")
    kube.set_deployment("shop", "app", replicas=1, ready=1, image=IMAGE)
    other = KubeApiDouble(bookmark_interval_s=0.2)
    await other.start()
    try:
        other.set_deployment("shop", "app", replicas=0, ready=0, image=IMAGE)
        other.set_node_images("node-1", [[IMAGE]])
        first = config(kube.kubeconfig(str(tmp_path)), b.port)
        unwatched = first.replace(f"  kubernetes: {{kubeconfig: {kube.kubeconfig(str(tmp_path))}}}\n", "")
        app = await router(unwatched)
        warmth, clock = app.ctx.policy.warmth, app.ctx.clock
        assert app.kube.providers == {} and warmth.get("shop", "a") is None

        async def reload(text: str) -> dict:
            (app.config_dir / "router.yaml").write_text(text)
            answer = await app.reloader.reload("test")
            assert answer["ok"] and not answer.get("next_start"), answer
            return answer
        await reload(first)
        await wait_for(lambda: warmth.warmth("shop", "a", clock()) == Warmth.WARM, timeout_s=10, what="watched")
        old = app.kube.providers["a"]

        await reload(config(other.kubeconfig(str(tmp_path)), b.port))  # another API: a new provider
        assert app.kube.providers["a"] is not old and old.stopping.is_set()
        assert warmth.warmth("shop", "a", clock()) == Warmth.UNKNOWN  # the old view is forgotten at once
        await wait_for(lambda: warmth.warmth("shop", "a", clock()) == Warmth.CACHED, timeout_s=10, what="new view")
        kube.set_deployment("shop", "app", replicas=3, ready=3, image=IMAGE)  # the old API: no longer heard
        await wait_for(lambda: not any(t.is_alive() for t in old.threads), timeout_s=5,
                       what="the old provider's watches ended (at their next event: a bookmark every 0.2 s)")
        assert warmth.warmth("shop", "a", clock()) == Warmth.CACHED and warmth.get("shop", "a").ready_replicas == 0

        await reload(unwatched)
        assert app.kube.providers == {} and warmth.get("shop", "a") is None
    finally:
        await other.stop()


def knative_config(kubeconfig: str, backend_port: int, hold: str = "10s") -> str:
    return config(kubeconfig, backend_port).replace(
        "workload: {kind: Deployment, namespace: shop, name: app}",
        "workload: {kind: KnativeService, namespace: shop, name: app}")


async def test_knative_revision_replicas_drive_warmth_and_min_scale_wakes_then_restores(kube, backends, router, tmp_path):
    (b,) = await backends("a")
    b.status = 503
    kube.set_knative_service("shop", "app", "app-00001", ready=True, image=IMAGE, annotations={"team": "shop"})
    kube.set_knative_revision("shop", "app-00001", actual_replicas=0, image=IMAGE)
    kube.set_node_images("node-1", [[IMAGE]])
    app = await router(knative_config(kube.kubeconfig(str(tmp_path)), b.port))
    warmth, clock = app.ctx.policy.warmth, app.ctx.clock
    await wait_for(lambda: warmth.warmth("shop", "a", clock()) == Warmth.CACHED, timeout_s=10, what="CACHED")
    app.knative_wake.hold_s = 0.5  # restore the annotation soon, for the test

    async def knative():  # min-scale 1 makes the autoscaler start a replica
        await wait_for(lambda: kube.patches, timeout_s=5, what="min-scale patch")
        await asyncio.sleep(0.2)
        b.status = 200
        kube.set_knative_revision("shop", "app-00001", actual_replicas=1, image=IMAGE)
    task = asyncio.create_task(knative())
    req = b"GET /k HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n"
    results = await asyncio.gather(*[raw_request(app.port, req, timeout_s=8) for _ in range(10)])
    await task
    assert all(r.startswith(b"HTTP/1.1 200") for r in results)
    assert warmth.warmth("shop", "a", clock()) == Warmth.WARM
    first = kube.patches[0]
    assert first[:3] == ("services.serving.knative.dev", "shop", "app")
    assert first[3] == {"spec": {"template": {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "1"}}}}}
    await wait_for(lambda: len(kube.patches) == 2, timeout_s=3, what="min-scale restored")
    annotations = kube.objects[("services", "shop", "app")]["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"team": "shop"}  # back as it was: ours removed, theirs kept


def split_resource(weights: dict, name: str = "global") -> dict:
    return {"apiVersion": "edge.router/v1alpha1", "kind": "TrafficSplit",
            "metadata": {"name": name, "namespace": "edge"},
            "spec": {"clusters": [{"name": n, "weight": w} for n, w in weights.items()]}}


async def test_trafficsplit_resources_are_swapped_like_files_and_get_a_status(kube, backends, router, tmp_path):
    from tests.conftest import keepalive_text
    a, b = await backends("a", "b")
    kube.set_custom(split_resource({"a": 1, "b": 0}))
    app = await router(cluster_docs({"a": a.port, "b": b.port}) +
                       router_doc(resources={"namespace": "edge", "kubeconfig": kube.kubeconfig(str(tmp_path))}))

    async def routed_to():
        try:
            return set(await keepalive_text(app.port, 10))
        except AssertionError:  # 404 until the resource is loaded
            return set()
    await wait_for(lambda: _eq(routed_to(), {"a"}), timeout_s=10, interval_s=0.1, what="split from the resource")
    await wait_for(lambda: kube.objects[("trafficsplits", "edge", "global")].get("status"), timeout_s=5, what="status")
    cond = kube.objects[("trafficsplits", "edge", "global")]["status"]["conditions"][0]
    assert cond["type"] == "Ready" and cond["status"] == "True"

    kube.set_custom(split_resource({"a": 0, "b": 1}))
    await wait_for(lambda: _eq(routed_to(), {"b"}), timeout_s=10, interval_s=0.1, what="updated resource swapped in")

    kube.set_custom(split_resource({"a": -1, "b": 1}))  # invalid: refused, the last good config keeps serving
    await wait_for(lambda: kube.objects[("trafficsplits", "edge", "global")]["status"]["conditions"][0]["status"]
                   == "False", timeout_s=10, what="Ready=False")
    cond = kube.objects[("trafficsplits", "edge", "global")]["status"]["conditions"][0]
    assert "k8s:edge/TrafficSplit/global:" in cond["message"] and "weight must not be negative" in cond["message"]
    assert await routed_to() == {"b"}
    assert app.metrics.reloads.labels("error")._value.get() >= 1


async def _eq(coro, want):
    return (await coro) == want


async def test_smi_and_gateway_api_resources_are_read_too(kube, backends, router, tmp_path):
    """An HTTPRoute and an SMI A/B split with its HTTPRouteGroup, read from the API like files: the SMI
    TrafficSplit found at the version its CRD serves (v1alpha2 here), and no status written to kinds whose
    schema is not the router's."""
    from tests.conftest import keepalive_answers
    a, b = await backends("a", "b")
    kube.set_custom({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                     "metadata": {"name": "web", "namespace": "edge"},
                     "spec": {"hostnames": ["shop"], "rules": [{"backendRefs": [{"name": "a"}]}]}})
    kube.set_custom({"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
                     "metadata": {"name": "beta", "namespace": "edge"},
                     "spec": {"matches": [{"name": "testers", "headers": {"x-beta": "yes"}}]}})
    kube.set_custom({"apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
                     "metadata": {"name": "ab", "namespace": "edge"},
                     "spec": {"service": "shop", "matches": [{"kind": "HTTPRouteGroup", "name": "beta"}],
                              "backends": [{"service": "b", "weight": 1}]}})
    app = await router(cluster_docs({"a": a.port, "b": b.port}) +
                       router_doc(resources={"namespace": "edge", "kubeconfig": kube.kubeconfig(str(tmp_path))}))

    async def routed(extra: str = ""):
        try:
            return {cluster for cluster, _ in await keepalive_answers(app.port, 5, host="shop", extra=extra)}
        except AssertionError:  # 404 until the resources are loaded
            return set()
    await wait_for(lambda: _eq(routed("X-Beta: yes\r\n"), {"b"}), timeout_s=10, interval_s=0.1, what="the SMI split")
    assert await routed() == {"a"}  # everyone else: the HTTPRoute
    assert kube.lists["trafficsplits.split.smi-spec.io"] >= 1
    assert sorted(app.config.files)[-3:] == ["k8s:edge/HTTPRoute/web", "k8s:edge/HTTPRouteGroup/beta",
                                             "k8s:edge/TrafficSplit/ab"]
    assert not any("status" in o for (r, _, _), o in kube.objects.items() if "." in r)


async def test_service_resources_name_a_splits_hosts(kube, backends, router, tmp_path):
    """A Service resource (edge.router/v1alpha1) beside a TrafficSplit resource naming it: its hosts route
    there, and it gets a Ready status like the router's other kinds (the API's Knative Services apart)."""
    from tests.conftest import keepalive_answers
    (a,) = await backends("a")
    kube.set_custom({"apiVersion": "edge.router/v1alpha1", "kind": "Service",
                     "metadata": {"name": "shop", "namespace": "edge"},
                     "spec": {"hosts": ["shop.example.com"], "containerConcurrency": 10}})
    kube.set_custom({"apiVersion": "edge.router/v1alpha1", "kind": "TrafficSplit",
                     "metadata": {"name": "shop", "namespace": "edge"},
                     "spec": {"service": "shop", "clusters": [{"name": "a", "weight": 1}]}})
    app = await router(cluster_docs({"a": a.port}) +
                       router_doc(resources={"namespace": "edge", "kubeconfig": kube.kubeconfig(str(tmp_path))}))

    async def routed():
        try:
            return {cluster for cluster, _ in await keepalive_answers(app.port, 3, host="shop.example.com")}
        except AssertionError:
            return set()
    await wait_for(lambda: _eq(routed(), {"a"}), timeout_s=10, interval_s=0.1, what="the Service's host routed")
    assert [s.name for s in app.config.services] == ["shop"]
    await wait_for(lambda: kube.objects[("services.edge.router", "edge", "shop")].get("status"), timeout_s=5,
                   what="the Service's status")
    assert kube.objects[("services.edge.router", "edge", "shop")]["status"]["conditions"][0]["status"] == "True"
