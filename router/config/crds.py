"""OpenAPI v3 schemas of the config kinds the router accepts as custom resources, and the CRDs
built from them. One source: deploy/crds/*.yaml are generated here (`python -m router.config.crds`)
and a test checks they are current and that they accept config/ and reject broken documents.
"""
from __future__ import annotations

import sys

import yaml

DURATION = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"
LABEL_SELECTOR = r"^[A-Za-z0-9][A-Za-z0-9._/-]*=(=)?[A-Za-z0-9._/-]*(,[A-Za-z0-9][A-Za-z0-9._/-]*=(=)?[A-Za-z0-9._/-]*)*$"

HEADER_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$", "maxLength": 256}
HEADER_PAIRS = {"type": "array", "maxItems": 16, "items": {
    "type": "object", "required": ["name", "value"],
    "properties": {"name": HEADER_NAME, "value": {"type": "string", "maxLength": 4096}}}}
HEADER_OPS = {"type": "object", "properties": {"set": HEADER_PAIRS, "add": HEADER_PAIRS,
                                               "remove": {"type": "array", "maxItems": 16, "items": HEADER_NAME}}}
MATCH_PAIRS = {"type": "array", "maxItems": 16, "items": {
    "type": "object", "required": ["name", "value"],
    "properties": {"name": HEADER_NAME, "value": {"type": "string", "maxLength": 4096},
                   "type": {"type": "string", "enum": ["Exact", "RegularExpression"]}}}}
MIRROR = {"type": "object", "required": ["cluster"], "properties": {
    "cluster": {"type": "string", "minLength": 1}, "percent": {"type": "number", "minimum": 0, "maximum": 100}}}
TRAFFIC_SPLIT_SPEC = {
    "type": "object",
    "anyOf": [{"required": ["clusters"]}, {"required": ["redirect"]}],
    "properties": {
        "clusters": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["weight"],
            "properties": {"name": {"type": "string", "minLength": 1},
                           "weight": {"type": "number", "minimum": 0},
                           "selector": {"type": "string", "pattern": LABEL_SELECTOR},
                           "requestHeaders": HEADER_OPS, "responseHeaders": HEADER_OPS}}},
        "strategy": {"type": "object", "properties": {
            "algorithm": {"type": "string", "enum": ["latency-aware", "weighted"]},
            "params": {"type": "object", "properties": {"maxRTT": {"type": "string", "pattern": DURATION}}}}},
        "hosts": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "service": {"type": "string", "minLength": 1},
        "pathPrefix": {"type": "string", "pattern": "^/"},
        "affinity": {"type": "object", "maxProperties": 1, "properties": {
            "header": {"type": "string"}, "cookie": {"type": "string"}, "pathSegments": {"type": "integer", "minimum": 1}}},
        "requestHeaders": HEADER_OPS,
        "responseHeaders": HEADER_OPS,
        "rewrite": {"type": "object", "maxProperties": 2, "properties": {
            "pathPrefix": {"type": "string", "pattern": "^/"}, "fullPath": {"type": "string", "pattern": "^/"},
            "hostname": {"type": "string", "minLength": 1}}},
        "redirect": {"type": "object", "properties": {
            "scheme": {"type": "string", "enum": ["http", "https"]}, "hostname": {"type": "string", "minLength": 1},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "statusCode": {"type": "integer", "enum": [301, 302, 303, 307, 308]},
            "pathPrefix": {"type": "string", "pattern": "^/"}, "fullPath": {"type": "string", "pattern": "^/"}}},
        "match": {"type": "object", "properties": {
            "headers": MATCH_PAIRS, "queryParams": MATCH_PAIRS,
            "method": {"type": "string", "enum": ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                                                  "TRACE", "PATCH"]}}},
        "mirror": MIRROR,
        "mirrors": {"type": "array", "maxItems": 8, "items": MIRROR},
        "retry": {"type": "object", "required": ["codes"], "properties": {
            "codes": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 400, "maximum": 599}},
            "attempts": {"type": "integer", "minimum": 1},
            "backoff": {"type": "string", "pattern": DURATION}}},
        "sourceRanges": {"type": "object", "properties": {
            "allow": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "deny": {"type": "array", "items": {"type": "string", "minLength": 1}}}},
        "rateLimit": {"type": "object", "required": ["requestsPerSecond"], "properties": {
            "requestsPerSecond": {"type": "number", "minimum": 0, "maximum": 1e9},
            "burst": {"type": "integer", "minimum": 1},
            "key": {"type": "string", "pattern": r"^(route|client|header:[!#$%&'*+\-.^_`|~0-9A-Za-z]+)$"}}},
        "sessionPersistence": {"type": "object", "properties": {
            "sessionName": {"type": "string", "minLength": 1, "maxLength": 128},
            "type": {"type": "string", "enum": ["Cookie", "Header"]},
            "absoluteTimeout": {"type": "string", "pattern": DURATION},
            "idleTimeout": {"type": "string", "pattern": DURATION},
            "cookieConfig": {"type": "object", "properties": {
                "lifetimeType": {"type": "string", "enum": ["Session", "Permanent"]}}}}},
        "timeouts": {"type": "object", "properties": {
            "request": {"type": "string", "pattern": DURATION}, "perTry": {"type": "string", "pattern": DURATION},
            "hedge": {"type": "boolean"}}},
        "maxBody": {"x-kubernetes-int-or-string": True},
        "fault": {"type": "object", "properties": {
            "delay": {"type": "object", "required": ["fixedDelay"], "properties": {
                "fixedDelay": {"type": "string", "pattern": DURATION},
                "percent": {"type": "number", "minimum": 0, "maximum": 100}}},
            "abort": {"type": "object", "required": ["httpStatus"], "properties": {
                "httpStatus": {"type": "integer", "minimum": 200, "maximum": 599},
                "percent": {"type": "number", "minimum": 0, "maximum": 100}}}}},
        "directResponse": {"type": "object", "required": ["status"], "properties": {
            "status": {"type": "integer", "minimum": 200, "maximum": 599},
            "body": {"type": "string", "maxLength": 4096}, "contentType": {"type": "string", "minLength": 1}}},
        "externalAuth": {"type": "object", "required": ["cluster"], "properties": {
            "cluster": {"type": "string", "minLength": 1}, "path": {"type": "string", "pattern": "^/"},
            **{key: {"type": "array", "maxItems": 64, "items": {"type": "string", "minLength": 1}}
               for key in ("allowedHeaders", "allowedResponseHeaders")},
            "timeout": {"type": "string", "pattern": DURATION},
            "forwardBody": {"type": "object", "properties": {"maxSize": {"x-kubernetes-int-or-string": True}}}}},
        "cors": {"type": "object", "required": ["allowOrigins"], "properties": {
            **{key: {"type": "array", "maxItems": 64, "items": {"type": "string", "minLength": 1}}
               for key in ("allowOrigins", "allowMethods", "allowHeaders", "exposeHeaders")},
            "allowCredentials": {"type": "boolean"},
            "maxAge": {"type": "integer", "minimum": 1}}},
    },
}


CLUSTER_SPEC = {
    "type": "object",
    "required": ["endpoint"],
    "properties": {
        "endpoint": {"type": "string", "pattern": r"^https?://[^/\s]+/?$"},
        "maxRequests": {"type": "integer", "minimum": 1},
        "preconnect": {"type": "integer", "minimum": 0, "maximum": 64},
        "maxRequestsPerConnection": {"type": "integer", "minimum": 1},
        "maxConnectionAge": {"type": "string", "pattern": DURATION},
        "kubernetes": {"type": "object", "properties": {"kubeconfig": {"type": "string"},
                                                        "context": {"type": "string"},
                                                        "inCluster": {"type": "boolean"}}},
        "probe": {"type": "object", "properties": {"path": {"type": "string", "pattern": "^/"}}},
        "tls": {"type": "object", "properties": {"caFile": {"type": "string", "minLength": 1},
                                                 "certFile": {"type": "string", "minLength": 1},
                                                 "keyFile": {"type": "string", "minLength": 1},
                                                 "serverName": {"type": "string", "minLength": 1}}},
    },
}

SERVICE_SPEC = {
    "type": "object",
    "required": ["hosts"],
    "properties": {
        "hosts": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "workload": {"type": "object", "required": ["kind", "name"], "properties": {
            "kind": {"type": "string", "enum": ["Deployment", "KnativeService"]},
            "namespace": {"type": "string", "minLength": 1}, "name": {"type": "string", "minLength": 1},
            "image": {"type": "string", "minLength": 1}}},
        "containerConcurrency": {"type": "integer", "minimum": 1},
        "state": {"type": "object", "additionalProperties": {"type": "string", "enum": ["warm", "cached", "cold"]}},
        "holdLimit": {"type": "string", "pattern": DURATION},
        "wake": {"type": "object", "properties": {"http": {"type": "object", "properties": {
            "path": {"type": "string", "pattern": "^/"},
            "method": {"type": "string", "enum": ["GET", "POST", "HEAD", "PUT"]}}}}},
        "readinessPath": {"type": "string", "pattern": "^/"},
        "wakeParallelism": {"type": "integer", "minimum": 1, "maximum": 2},
        "spillover": {"type": "boolean"},
        "wakeSkipped": {"type": "boolean"},
        "keepWarm": {"type": "boolean"},
    },
}

STATUS = {"type": "object", "properties": {"conditions": {"type": "array", "items": {
    "type": "object", "required": ["type", "status"],
    "properties": {"type": {"type": "string"}, "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                   "reason": {"type": "string"}, "message": {"type": "string"},
                   "lastTransitionTime": {"type": "string", "format": "date-time"}}}}}}


READY_COLUMN = {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def crd(group: str, kind: str, plural: str, spec_schema: dict, short: list[str], columns: list[dict]) -> dict:
    """A CRD; `kubectl get` shows `columns`, then whether the router accepted the resource and its age."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List",
                           "shortNames": short},
                 "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                               "subresources": {"status": {}},
                               "additionalPrinterColumns": [*columns, READY_COLUMN, AGE_COLUMN],
                               "schema": {"openAPIV3Schema": {"type": "object", "required": ["spec"], "properties": {
                                   "spec": spec_schema, "status": STATUS}}}}]}}


SPLIT_COLUMNS = [{"name": "Service", "type": "string", "jsonPath": ".spec.service"},
                 {"name": "Hosts", "type": "string", "jsonPath": ".spec.hosts"},
                 {"name": "Algorithm", "type": "string", "jsonPath": ".spec.strategy.algorithm"}]


def all_crds() -> dict[str, dict]:
    return {
        "trafficsplits.yaml": crd("edge.router", "TrafficSplit", "trafficsplits", TRAFFIC_SPLIT_SPEC, ["ts"],
                                  SPLIT_COLUMNS),
        "clusters.yaml": crd("edge.router", "Cluster", "clusters", CLUSTER_SPEC, ["erc"],
                             [{"name": "Endpoint", "type": "string", "jsonPath": ".spec.endpoint"}]),
        "services.yaml": crd("edge.router", "Service", "services", SERVICE_SPEC, ["ers"],
                             [{"name": "Hosts", "type": "string", "jsonPath": ".spec.hosts"},
                              {"name": "Workload", "type": "string", "jsonPath": ".spec.workload.name"}]),
        "knative-trafficsplits.yaml": crd("networking.knative.dev", "TrafficSplit", "trafficsplits",
                                          TRAFFIC_SPLIT_SPEC, [], SPLIT_COLUMNS),
    }


class _NoAliases(yaml.SafeDumper):
    """Schemas share sub-schemas (the header lists): written out in full, no YAML anchors."""

    def ignore_aliases(self, data) -> bool:
        return True


def render(doc: dict) -> str:
    return "# Generated by `python -m router.config.crds`: edit router/config/crds.py instead.\n" + \
        yaml.dump(doc, Dumper=_NoAliases, sort_keys=False, allow_unicode=True)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "deploy/crds"
    for name, doc in all_crds().items():
        with open(f"{out}/{name}", "w", encoding="utf-8") as fh:
            fh.write(render(doc))
