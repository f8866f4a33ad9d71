"""A Kubernetes API double: an aiohttp server speaking the real REST list/watch protocol.

Enough of the API for the router's Kubernetes provider and for the lab: apps/v1 Deployments
(with the scale subresource), v1 Nodes (status.images), serving.knative.dev/v1 Services
(merge-patch) and Revisions. Lists carry a resourceVersion; watches
stream JSON lines from a resourceVersion, send BOOKMARK events, end after timeoutSeconds, and
answer an ERROR 410 (Gone) event for a resourceVersion older than the retained history.
PATCH takes merge-patch. The official client reaches it through `kubeconfig()`.

Test and lab hooks: `set_deployment`, `set_node_images`, `outage` (answers 503 to everything),
`forbid` (answers 403 for a resource), `compact()` (drops history, so old watches get 410),
`patches` (every PATCH and pod deletion received), `scale_hooks` (called after a scale PATCH),
`pod_delete_hooks` (deleting pods by label: the lab restarts them). Nodes take merge-patch (cordon).
Custom resources (`set_custom`): edge.router/v1alpha1 TrafficSplits, Clusters and Services (with a status
subresource), and read-only SMI TrafficSplits (served at v1alpha2 only), HTTPRouteGroups and Gateway API
HTTPRoutes.
"""
from __future__ import annotations

import asyncio
import copy
import json
import os
import tempfile

from aiohttp import web

from router.obs.admin import start_site


BOOKMARK_KINDS = {"trafficsplits": ("TrafficSplit", "edge.router/v1alpha1"),
                  "clusters": ("Cluster", "edge.router/v1alpha1"),
                  "deployments": ("Deployment", "apps/v1"), "nodes": ("Node", "v1"),
                  "services": ("Service", "serving.knative.dev/v1"), "revisions": ("Revision", "serving.knative.dev/v1")}
# Other projects' custom resources the double serves, read-only, each at one version (as a cluster whose
# CRD serves only that one): resource name (plural.group) -> (kind, apiVersion)
FOREIGN = {"trafficsplits.split.smi-spec.io": ("TrafficSplit", "split.smi-spec.io/v1alpha2"),
           "httproutegroups.specs.smi-spec.io": ("HTTPRouteGroup", "specs.smi-spec.io/v1alpha4"),
           "httproutes.gateway.networking.k8s.io": ("HTTPRoute", "gateway.networking.k8s.io/v1")}
BOOKMARK_KINDS.update(FOREIGN)
BOOKMARK_KINDS["services.edge.router"] = ("Service", "edge.router/v1alpha1")


def _resource(group: str, plural: str) -> str:
    """The double's name for a custom resource: the plural alone for the router's TrafficSplits and Clusters,
    else plural.group (so the router's Services are not Knative's)."""
    return plural if group == "edge.router" and plural != "services" else f"{plural}.{group}"


class KubeApiDouble:
    HISTORY = 1000

    def __init__(self, bookmark_interval_s: float = 1.0):
        self.rv = 1
        self.objects: dict[tuple[str, str, str], dict] = {}  # (resource, namespace, name) -> object
        self.events: list[tuple[int, str, str, dict]] = []  # (rv, resource, type, object)
        self.oldest_rv = 1
        self.changed = asyncio.Event()
        self.bookmark_interval_s = bookmark_interval_s
        self.outage = False
        self.forbidden: set[str] = set()
        self.patches: list[tuple[str, str, str, dict]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.watchers = 0
        self.epoch = 0  # bumped by compact(): open watches end
        self.lists: dict[str, int] = {}  # resource -> list requests served
        self.gone: int = 0  # 410 answers sent
        self.refused_patches = 0  # PATCHes answered 503 during an outage (wake attempts)
        self.scale_hooks: list = []  # (namespace, name, replicas) -> None, after a scale PATCH
        self.pod_delete_hooks: list = []  # (namespace, labelSelector) -> int pods deleted

    # --- hooks ------------------------------------------------------------------------
    def set_deployment(self, namespace: str, name: str, replicas: int, ready: int | None = None,
                       image: str = "registry.example.com/app:1") -> dict:
        obj = {"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}"},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                        "template": {"metadata": {"labels": {"app": name}},
                                     "spec": {"containers": [{"name": name, "image": image}]}}},
               "status": {"replicas": replicas, "readyReplicas": replicas if ready is None else ready,
                          "availableReplicas": replicas if ready is None else ready}}
        return self._put("deployments", namespace, name, obj)

    def set_node_images(self, node: str, images: list[list[str]]) -> dict:
        obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "uid": f"uid-node-{node}"},
               "status": {"images": [{"names": names, "sizeBytes": 1000} for names in images]}}
        return self._put("nodes", "", node, obj)

    def set_knative_service(self, namespace: str, name: str, revision: str, ready: bool = True,
                            image: str = "registry.example.com/app:1", annotations: dict | None = None) -> dict:
        obj = {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
               "metadata": {"name": name, "namespace": namespace, "uid": f"uid-ksvc-{namespace}-{name}"},
               "spec": {"template": {"metadata": {"annotations": dict(annotations or {})},
                                     "spec": {"containers": [{"image": image}]}}},
               "status": {"latestReadyRevisionName": revision,
                          "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
        return self._put("services", namespace, name, obj)

    def set_knative_revision(self, namespace: str, name: str, actual_replicas: int,
                             image: str = "registry.example.com/app:1") -> dict:
        obj = {"apiVersion": "serving.knative.dev/v1", "kind": "Revision",
               "metadata": {"name": name, "namespace": namespace, "uid": f"uid-rev-{namespace}-{name}"},
               "spec": {"containers": [{"image": image}]},
               "status": {"actualReplicas": actual_replicas,
                          "conditions": [{"type": "Ready", "status": "True"}]}}
        return self._put("revisions", namespace, name, obj)

    def set_custom(self, obj: dict) -> dict:
        """Create or replace a TrafficSplit or Cluster (edge.router/v1alpha1) resource, or one of FOREIGN."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        group = obj["apiVersion"].rpartition("/")[0]
        plural = _resource(group, obj["kind"].lower() + "s")
        old = self.objects.get((plural, meta["namespace"], meta["name"]))
        if old is not None and "status" in old:
            obj["status"] = old["status"]
        return self._put(plural, meta["namespace"], meta["name"], obj)

    def compact(self) -> None:
        """Forget all history and end every open watch (as an API server restart would): watchers
        that come back with an older resourceVersion get 410 Gone and must relist."""
        self.events.clear()
        self.oldest_rv = self.rv + 1
        self.epoch += 1
        self.changed.set()
        self.changed = asyncio.Event()

    # --- state --------------------------------------------------------------------------
    def _put(self, resource: str, namespace: str, name: str, obj: dict) -> dict:
        key = (resource, namespace, name)
        kind = "MODIFIED" if key in self.objects else "ADDED"
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[key] = obj
        self.events.append((self.rv, resource, kind, copy.deepcopy(obj)))
        if len(self.events) > self.HISTORY:
            dropped = self.events.pop(0)
            self.oldest_rv = dropped[0]
        self.changed.set()
        self.changed = asyncio.Event()
        return obj

    # --- server ---------------------------------------------------------------------------
    async def start(self) -> int:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/api/v1/nodes", self.list_or_watch("nodes", "NodeList", "v1"))
        app.router.add_patch("/api/v1/nodes/{name}", self.patch_node)
        app.router.add_delete("/api/v1/namespaces/{ns}/pods", self.delete_pods)
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/deployments",
                           self.list_or_watch("deployments", "DeploymentList", "apps/v1"))
        app.router.add_get("/apis/apps/v1/deployments", self.list_or_watch("deployments", "DeploymentList", "apps/v1"))
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/deployments/{name}", self.get_deployment)
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale", self.get_scale)
        app.router.add_patch("/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale", self.patch_scale)
        for plural, kind in (("services", "ServiceList"), ("revisions", "RevisionList")):
            handler = self.list_or_watch(plural, kind, "serving.knative.dev/v1")
            app.router.add_get(f"/apis/serving.knative.dev/v1/{plural}", handler)
            app.router.add_get(f"/apis/serving.knative.dev/v1/namespaces/{{ns}}/{plural}", handler)
        app.router.add_patch("/apis/serving.knative.dev/v1/namespaces/{ns}/services/{name}", self.patch_knative)
        for plural, kind in (("trafficsplits", "TrafficSplitList"), ("clusters", "ClusterList"),
                             ("services", "ServiceList")):
            resource = _resource("edge.router", plural)
            app.router.add_get(f"/apis/edge.router/v1alpha1/namespaces/{{ns}}/{plural}",
                               self.list_or_watch(resource, kind, "edge.router/v1alpha1"))
            app.router.add_patch(f"/apis/edge.router/v1alpha1/namespaces/{{ns}}/{plural}/{{name}}/status",
                                 self.patch_status(resource))
        for resource, (kind, api_version) in FOREIGN.items():
            plural = resource.partition(".")[0]
            app.router.add_get(f"/apis/{api_version}/namespaces/{{ns}}/{plural}",
                               self.list_or_watch(resource, f"{kind}List", api_version))
        self.runner, self.port = await start_site(app, "127.0.0.1", 0)
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def kubeconfig(self, directory: str | None = None, context: str = "double") -> str:
        """Write a kubeconfig pointing at this server; returns its path."""
        directory = directory or tempfile.mkdtemp(prefix="kube-double-")
        path = os.path.join(directory, f"kubeconfig-{self.port}")
        with open(path, "w") as fh:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": context,
                       "clusters": [{"name": context, "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
                       "users": [{"name": context, "user": {"token": "double-token"}}],
                       "contexts": [{"name": context, "context": {"cluster": context, "user": context}}]}, fh)
        return path

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        if self.outage:
            if request.method == "PATCH":
                self.refused_patches += 1
            return _status(503, "ServiceUnavailable", "the API server is unavailable")
        for resource in self.forbidden:
            if f"/{resource}" in request.path:
                verb = {"GET": "watch" if request.query.get("watch") in ("true", "1") else "list",
                        "PATCH": "patch"}.get(request.method, request.method.lower())
                return _status(403, "Forbidden", f'{resource} is forbidden: User "system:serviceaccount:edge:router" '
                                                 f'cannot {verb} resource "{resource}"')
        return await handler(request)

    def list_or_watch(self, resource: str, list_kind: str, api_version: str):
        async def handler(request: web.Request) -> web.StreamResponse:
            ns = request.match_info.get("ns")
            if request.query.get("watch") in ("true", "1"):
                return await self._watch(request, resource, ns)
            self.lists[resource] = self.lists.get(resource, 0) + 1
            items = [copy.deepcopy(o) for (r, n, _), o in sorted(self.objects.items())
                     if r == resource and (ns is None or n == ns)]
            return web.json_response({"apiVersion": api_version, "kind": list_kind,
                                      "metadata": {"resourceVersion": str(self.rv)}, "items": items})
        return handler

    async def _watch(self, request: web.Request, resource: str, ns: str | None) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.rv)
        timeout = float(request.query.get("timeoutSeconds") or 300)
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        self.watchers += 1
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        try:
            epoch = self.epoch
            if since < self.oldest_rv - 1:
                self.gone += 1
                await _send(resp, {"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                    "message": f"too old resource version: {since} ({self.oldest_rv})"}})
                return resp
            while loop.time() < end and not self.outage and epoch == self.epoch:
                for rv, res, kind, obj in list(self.events):
                    if rv > since and res == resource and (ns is None or obj["metadata"].get("namespace") == ns):
                        await _send(resp, {"type": kind, "object": obj})
                    since = max(since, rv) if res == resource else since
                since = max(since, self.rv)
                changed = self.changed
                try:
                    await asyncio.wait_for(changed.wait(), min(self.bookmark_interval_s, max(end - loop.time(), 0.01)))
                except asyncio.TimeoutError:
                    if bookmarks:
                        kind, api = BOOKMARK_KINDS[resource]
                        await _send(resp, {"type": "BOOKMARK", "object": {
                            "kind": kind, "apiVersion": api, "metadata": {"resourceVersion": str(self.rv)}}})
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers -= 1
        return resp

    async def _patch_target(self, request: web.Request, plural: str, what: str, recorded_as: str):
        """The object a PATCH names and the patch body (recorded), or a 404 response."""
        ns, name = request.match_info["ns"], request.match_info["name"]
        obj = self.objects.get((plural, ns, name))
        if obj is None:
            return None, _status(404, "NotFound", f'{what} "{name}" not found')
        body = await request.json()
        self.patches.append((recorded_as, ns, name, body))
        return copy.deepcopy(obj), body

    async def patch_knative(self, request: web.Request) -> web.Response:
        obj, body = await self._patch_target(request, "services", "services.serving.knative.dev",
                                             "services.serving.knative.dev")
        if obj is None:
            return body
        self._put("services", obj["metadata"]["namespace"], obj["metadata"]["name"], _merge(obj, body))
        return web.json_response(obj)

    def patch_status(self, plural: str):
        async def handler(request: web.Request) -> web.Response:
            obj, body = await self._patch_target(request, plural, f"{plural}.edge.router", f"{plural}/status")
            if obj is None:
                return body
            obj["status"] = body.get("status", {})
            self._put(plural, obj["metadata"]["namespace"], obj["metadata"]["name"], obj)
            return web.json_response(obj)
        return handler

    async def patch_node(self, request: web.Request) -> web.Response:
        """Merge-patch a Node (e.g. spec.unschedulable: cordon)."""
        name = request.match_info["name"]
        obj = self.objects.get(("nodes", "", name))
        if obj is None:
            return _status(404, "NotFound", f'nodes "{name}" not found')
        body = await request.json()
        self.patches.append(("nodes", "", name, body))
        obj = _merge(copy.deepcopy(obj), body)
        self._put("nodes", "", name, obj)
        return web.json_response(obj)

    async def delete_pods(self, request: web.Request) -> web.Response:
        """deletecollection of pods by labelSelector: the owners (hooks) recreate them."""
        ns, selector = request.match_info["ns"], request.query.get("labelSelector", "")
        self.patches.append(("pods/deletecollection", ns, selector, {}))
        deleted = sum(hook(ns, selector) for hook in self.pod_delete_hooks)
        return web.json_response({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                                  "items": [{"metadata": {"name": f"pod-{i}"}} for i in range(deleted)]})

    async def get_deployment(self, request: web.Request) -> web.Response:
        obj = self.objects.get(("deployments", request.match_info["ns"], request.match_info["name"]))
        if obj is None:
            return _status(404, "NotFound", f'deployments.apps "{request.match_info["name"]}" not found')
        return web.json_response(obj)

    async def get_scale(self, request: web.Request) -> web.Response:
        key = ("deployments", request.match_info["ns"], request.match_info["name"])
        obj = self.objects.get(key)
        if obj is None:
            return _status(404, "NotFound", f'deployments.apps "{key[2]}" not found')
        return web.json_response(_scale(obj))

    async def patch_scale(self, request: web.Request) -> web.Response:
        obj, body = await self._patch_target(request, "deployments", "deployments.apps", "deployments/scale")
        if obj is None:
            return body
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        replicas = body.get("spec", {}).get("replicas")
        if isinstance(replicas, int):
            obj["spec"]["replicas"] = replicas
            obj["status"]["replicas"] = replicas
            self._put("deployments", ns, name, obj)
            for hook in self.scale_hooks:
                hook(ns, name, replicas)
        return web.json_response(_scale(obj))


def _merge(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _scale(obj: dict) -> dict:
    meta = obj["metadata"]
    return {"apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "resourceVersion": meta["resourceVersion"]},
            "spec": {"replicas": obj["spec"]["replicas"]},
            "status": {"replicas": obj["status"].get("replicas", 0), "selector": f"app={meta['name']}"}}


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code}, status=code)


async def _send(resp: web.StreamResponse, event: dict) -> None:
    await resp.write(json.dumps(event).encode() + b"\n")
