"""TrafficSplit, Cluster and Service custom resources (and SMI TrafficSplits and HTTPRouteGroups, Gateway API
HTTPRoutes), read from a namespace of the router's own cluster and validated and swapped exactly like files.

A thread per resource type lists and watches (the official client is synchronous); every change
re-renders the current set as YAML documents named `k8s:NAMESPACE/KIND/NAME` and asks for a
reload. The reload's outcome is written back to the status of each of the router's own kinds: condition
Ready=True, or Ready=False with the FILE:LINE messages of its problems (the last good config keeps
serving). Other projects' kinds keep their status as their schemas have it: their problems are logged and
shown in /debug/state. A type the API does not serve (its CRD not installed) is not watched; for SMI kinds
the newest version served is used.
"""
from __future__ import annotations

import asyncio
import logging
import random
import threading
from datetime import datetime, timezone
from typing import Callable

import yaml

from ..config.model import ResourceWatch

log = logging.getLogger("router.resources")
SMI_VERSIONS = ("v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1")
# (group, versions to try, newest first, plural, whether the router writes its status)
KINDS = (("edge.router", ("v1alpha1",), "trafficsplits", True), ("edge.router", ("v1alpha1",), "clusters", True),
         ("edge.router", ("v1alpha1",), "services", True),
         ("networking.knative.dev", ("v1alpha1",), "trafficsplits", True),
         ("split.smi-spec.io", SMI_VERSIONS, "trafficsplits", False),
         ("specs.smi-spec.io", SMI_VERSIONS, "httproutegroups", False),
         ("gateway.networking.k8s.io", ("v1", "v1beta1"), "httproutes", False))
STATUS_WRITTEN = {(group, plural) for group, _, plural, written in KINDS if written}


def _config_of(obj: dict | None):
    return None if obj is None else (obj.get("spec"), obj.get("metadata", {}).get("labels"))


def source_name(obj: dict) -> str:
    meta = obj["metadata"]
    return f"k8s:{meta.get('namespace', '')}/{obj['kind']}/{meta['name']}"


def render(obj: dict) -> str:
    """The parts of a resource the config loader reads (status and bookkeeping dropped)."""
    meta = obj.get("metadata", {})
    doc = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
           "metadata": {k: meta[k] for k in ("name", "namespace", "labels") if k in meta}}
    if "matches" in obj and "spec" not in obj:  # an SMI v1alpha1 HTTPRouteGroup keeps them at the top
        doc["matches"] = obj["matches"]
    else:
        doc["spec"] = obj.get("spec", {})
    return yaml.safe_dump(doc, sort_keys=False)


class ResourceWatcher:
    def __init__(self, watch: ResourceWatch, on_change: Callable[[dict], None], loop: asyncio.AbstractEventLoop):
        self.watch, self.on_change, self.loop = watch, on_change, loop
        self.objects: dict[tuple[str, str, str], dict] = {}  # (group, plural, name) -> object
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.client = None
        self.status: dict[str, tuple[str, str]] = {}  # source -> (status, message) last written
        self.rng = random.Random()

    def api(self):
        from kubernetes import client, config
        if self.client is None:
            if self.watch.in_cluster:
                config.load_incluster_config()
                self.client = client.ApiClient()
            else:
                self.client = config.new_client_from_config(config_file=self.watch.kubeconfig,
                                                            context=self.watch.context)
        return client.CustomObjectsApi(self.client)

    def start(self) -> None:
        for group, versions, plural, _ in KINDS:
            threading.Thread(target=self._run, args=(group, versions, plural), daemon=True,
                             name=f"resources-{group}-{plural}").start()

    def stop(self) -> None:
        self.stopping.set()

    def documents(self) -> tuple[tuple[str, str], ...]:
        with self.lock:
            return tuple(sorted((source_name(o), render(o)) for o in self.objects.values()))

    def _changed(self) -> None:
        self.loop.call_soon_threadsafe(self.on_change, {})

    def _run(self, group: str, versions: tuple[str, ...], plural: str) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException
        failures = 0
        version, *older = versions
        while not self.stopping.is_set():
            try:
                api = self.api()
                listed = api.list_namespaced_custom_object(group, version, self.watch.namespace, plural,
                                                           _request_timeout=10)
                with self.lock:
                    for key in [k for k in self.objects if k[:2] == (group, plural)]:
                        del self.objects[key]
                    for obj in listed["items"]:
                        self.objects[(group, plural, obj["metadata"]["name"])] = obj
                self._changed()
                failures = 0
                rv = listed["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    w = watch.Watch()
                    for event in w.stream(api.list_namespaced_custom_object, group, version, self.watch.namespace,
                                          plural, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=10):
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            obj = event["object"]
                            key = (group, plural, obj["metadata"]["name"])
                            with self.lock:
                                before = self.objects.pop(key, None)
                                if event["type"] != "DELETED":
                                    self.objects[key] = obj
                            if event["type"] == "DELETED" or _config_of(before) != _config_of(obj):
                                self._changed()  # a status write changes nothing the loader reads
                        if self.stopping.is_set():
                            break
                    rv = w.resource_version or rv
            except ApiException as exc:
                if exc.status == 410:
                    continue
                if exc.status == 404 and older:  # not served in this version: the next older one
                    version, *older = older
                    continue
                if exc.status == 404:
                    log.info("%s/%s: resource type not installed; not watching it", group, plural)
                    return
                failures += 1
                log.error("watching %s/%s in %s: API error %s: %s", group, plural, self.watch.namespace,
                          exc.status, exc.reason)
            except Exception as exc:
                failures += 1
                log.error("watching %s/%s: %s: %s", group, plural, type(exc).__name__, exc)
            self.stopping.wait(min(0.2 * 2 ** min(failures, 8), 30.0) * self.rng.uniform(0.5, 1.0))

    def write_status(self, problems: list) -> None:
        """Ready=True, or Ready=False with this resource's problems. Runs in a thread (blocking client)."""
        from kubernetes.client.rest import ApiException
        by_source: dict[str, list[str]] = {}
        for p in problems:
            by_source.setdefault(p.file, []).append(str(p))
        with self.lock:
            objects = list(self.objects.items())
        for (group, plural, name), obj in objects:
            if (group, plural) not in STATUS_WRITTEN:
                continue
            source = source_name(obj)
            errors = by_source.get(source)
            status, message = ("False", "\n".join(errors)) if errors else ("True", "accepted")
            if self.status.get(source) == (status, message):
                continue
            condition = {"type": "Ready", "status": status, "reason": "InvalidConfig" if errors else "Accepted",
                         "message": message[:4000],
                         "lastTransitionTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
            version = obj["apiVersion"].split("/", 1)[1]
            try:
                self.api().patch_namespaced_custom_object_status(group, version, self.watch.namespace, plural, name,
                                                                 {"status": {"conditions": [condition]}})
                self.status[source] = (status, message)
            except ApiException as exc:
                log.error("writing status of %s: API error %s: %s", source, exc.status, exc.reason)
