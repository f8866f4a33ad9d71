"""deploy/ checked offline: every manifest against the Kubernetes schemas (kubernetes-validate),
the CRDs generated from router/config/crds.py and current, config/ accepted by the CRD schemas,
broken documents rejected, alerts and dashboard only over metrics the router exports."""
import glob
import json
import os
import re
import tempfile

import jsonschema
import kubernetes_validate
import pytest
import yaml

from router.config import crds
from router.config.loader import load_config
from router.obs.metrics import Metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S_VERSION = "1.30.0"
NOT_IN_KUBERNETES = {"Kustomization", "PrometheusRule"}


def manifests():
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy", "**", "*.yaml"), recursive=True)):
        for doc in yaml.safe_load_all(open(path)):
            if doc:
                yield os.path.relpath(path, ROOT), doc


@pytest.mark.parametrize("path,doc", list(manifests()), ids=lambda v: v if isinstance(v, str) else v.get("kind"))
def test_manifest_is_valid_kubernetes(path, doc):
    if doc["kind"] in NOT_IN_KUBERNETES:
        assert doc["apiVersion"] in ("kustomize.config.k8s.io/v1beta1", "monitoring.coreos.com/v1")
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomizations_name_existing_files():
    for path in glob.glob(os.path.join(ROOT, "deploy", "**", "kustomization.yaml"), recursive=True):
        base = os.path.dirname(path)
        for res in yaml.safe_load(open(path))["resources"]:
            assert os.path.exists(os.path.join(base, res)), f"{path}: {res}"


def test_crds_are_generated_from_the_schema_module():
    for name, doc in crds.all_crds().items():
        with open(os.path.join(ROOT, "deploy", "crds", name), encoding="utf-8") as fh:
            assert fh.read() == crds.render(doc), f"deploy/crds/{name} is stale: run python -m router.config.crds"


def test_kubectl_shows_whether_the_router_accepted_each_resource():
    for doc in crds.all_crds().values():
        columns = {c["name"]: c["jsonPath"] for c in doc["spec"]["versions"][0]["additionalPrinterColumns"]}
        assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status', doc["metadata"]["name"]
        assert set(columns) - {"Ready", "Age"}  # and something of the spec


def _schema(kind: str, group: str = "edge.router") -> dict:
    for doc in crds.all_crds().values():
        if doc["spec"]["names"]["kind"] == kind and doc["spec"]["group"] == group:
            return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    raise KeyError(kind)


def _config_docs():
    for path in sorted(glob.glob(os.path.join(ROOT, "config", "*.yaml"))):
        for doc in yaml.safe_load_all(open(path)):
            if doc and doc["kind"] in ("TrafficSplit", "Cluster"):
                yield doc
    cm = yaml.safe_load(open(os.path.join(ROOT, "deploy", "base", "configmap.yaml")))
    for text in cm["data"].values():
        for doc in yaml.safe_load_all(text):
            if doc and doc["kind"] in ("TrafficSplit", "Cluster"):
                yield doc


def test_crd_schemas_accept_the_shipped_config():
    docs = list(_config_docs())
    assert {d["kind"] for d in docs} == {"TrafficSplit", "Cluster"}
    for doc in docs:
        jsonschema.validate(doc, _schema(doc["kind"], doc["apiVersion"].split("/")[0]))
    service = {"apiVersion": "edge.router/v1alpha1", "kind": "Service", "metadata": {"name": "shop"},
               "spec": {"hosts": ["shop.example.com"], "containerConcurrency": 10, "holdLimit": "30s",
                        "workload": {"kind": "KnativeService", "namespace": "shop", "name": "frontend"},
                        "state": {"us-west": "warm", "eu-central": "cached"}, "wake": {"http": {"path": "/wake"}},
                        "readinessPath": "/healthz", "wakeParallelism": 2, "spillover": True, "keepWarm": True}}
    jsonschema.validate(service, _schema("Service"))
    with tempfile.TemporaryDirectory() as tmp:  # and the loader takes what the schema takes
        with open(os.path.join(tmp, "s.yaml"), "w") as fh:
            fh.write(open(os.path.join(ROOT, "config", "clusters.yaml")).read() + "\n---\n" + yaml.safe_dump(service))
        assert load_config(tmp).services[0].hosts == ("shop.example.com",)


@pytest.mark.parametrize("kind,spec", [
    ("TrafficSplit", {"clusters": [{"name": "a", "weight": -1}]}),
    ("TrafficSplit", {"clusters": [{"name": "a"}]}),
    ("TrafficSplit", {"clusters": []}),
    ("TrafficSplit", {"clusters": [{"name": "a", "weight": 1}], "strategy": {"params": {"maxRTT": "200 ms"}}}),
    ("TrafficSplit", {"clusters": [{"name": "a", "weight": 1}], "strategy": {"algorithm": "fastest"}}),
    ("TrafficSplit", {"clusters": [{"selector": "region in (a,b)", "weight": 1}]}),
    ("Cluster", {"endpoint": "ftp://x"}),
    ("Cluster", {"endpoint": "http://x/path"}),
    ("Cluster", {}),
    ("Service", {}),
    ("Service", {"hosts": ["shop"], "state": {"a": "lukewarm"}}),
    ("Service", {"hosts": ["shop"], "workload": {"kind": "StatefulSet", "name": "x"}}),
    ("Service", {"hosts": ["shop"], "holdLimit": "30 s"}),
])
def test_crd_schemas_reject_broken_documents(kind, spec):
    doc = {"apiVersion": "edge.router/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, _schema(kind))


def _exported_metrics() -> set[str]:
    names = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    for metric in Metrics().registry.collect():
        names.update(metric.name + suffix for suffix in suffixes.get(metric.type, ("",)))
    return names


def test_alerts_and_dashboard_use_exported_metrics():
    exported = _exported_metrics()
    rules = yaml.safe_load(open(os.path.join(ROOT, "deploy", "monitoring", "prometheusrule.yaml")))
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    dash = json.load(open(os.path.join(ROOT, "deploy", "monitoring", "dashboard.json")))
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(router_[a-z_]+)", e)}
    assert used and used <= exported, used - exported
    alerts = {r["alert"] for g in rules["spec"]["groups"] for r in g["rules"]}
    assert alerts == {"EdgeRouterClusterEjected", "EdgeRouterBufferNearFull", "EdgeRouterWakeFailures",
                      "EdgeRouterConfigReloadFailed", "EdgeRouterCertificateExpiresSoon",
                      "EdgeRouterClusterClientCertificateExpiresSoon"}


def test_deployment_drains_within_its_grace_period():
    dep = yaml.safe_load(open(os.path.join(ROOT, "deploy", "base", "deployment.yaml")))
    cm = yaml.safe_load(open(os.path.join(ROOT, "deploy", "base", "configmap.yaml")))
    router = yaml.safe_load(cm["data"]["router.yaml"])
    drain_s = float(router["spec"]["timeouts"]["drain"].rstrip("s"))
    pod = dep["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > drain_s + pre_stop
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert dep["spec"]["replicas"] == 3
