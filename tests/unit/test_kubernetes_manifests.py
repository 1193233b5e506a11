"""deploy/kubernetes: every object validates against the Kubernetes API schemas of the
stated version (kubernetes-validate, strict: unknown fields fail), and the manifests hold
what the design needs: NATS JetStream as three replicas, the control plane as Deployments,
node agents as a GPU DaemonSet, gRPC health probes, requests and limits everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.common.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# The Kubernetes release the manifests are written for and validated against.
KUBERNETES_VERSION = "1.32.0"
FILES = sorted(p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name in FILES
            for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


DOCUMENTS = _documents()


def _object(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in DOCUMENTS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


@pytest.mark.parametrize(("file", "document"), DOCUMENTS,
                         ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCUMENTS])
def test_every_object_validates_strictly_against_the_api_schema(file: str, document: dict):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_kustomization_applies_every_manifest():
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == FILES


def test_nats_is_a_three_replica_jetstream_cluster():
    nats = _object("StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    config = _object("ConfigMap", "nats-config")["data"]["nats.conf"]
    assert "jetstream" in config and config.count("nats-headless") == 3
    assert nats["spec"]["volumeClaimTemplates"]
    url = _object("ConfigMap", "dilu-config")["data"]["DILU_NATS_URL"]
    assert len(url.split(",")) == 3


def _containers() -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], c) for _, d in DOCUMENTS
            if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
            for c in d["spec"]["template"]["spec"]["containers"]]


def test_every_container_has_probes_requests_and_limits():
    for owner, container in _containers():
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in container, (owner, probe)
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys(), owner
        assert {"cpu", "memory"} <= resources["limits"].keys(), owner
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, owner


@pytest.mark.parametrize(("workload", "kind", "service"), [
    ("dilu-scheduler", "Deployment", "scheduler"), ("dilu-profiler", "Deployment", "profiler"),
    ("dilu-scaler", "Deployment", "scaler"), ("dilu-node-agent", "DaemonSet", "node-agent")])
def test_dilu_services_probe_grpc_health_on_their_ports(workload: str, kind: str, service: str):
    pod = _object(kind, workload)["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": DEFAULT_PORTS[service], "metrics": DEFAULT_METRICS_PORTS[service]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/etc/dilu/tls"] == "tls"
    tls = next(v for v in pod["spec"]["volumes"] if v["name"] == "tls")
    assert tls["secret"] == {"secretName": "dilu-tls", "optional": True}


def test_node_agents_run_on_gpu_nodes_with_shared_memory_pages_and_the_shim():
    pod = _object("DaemonSet", "dilu-node-agent")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == _object("RuntimeClass", "nvidia")["metadata"]["name"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    pages = next(m for m in container["volumeMounts"] if m["mountPath"] == env["DILU_RUNTIME_DIR"])
    assert volumes[pages["name"]]["emptyDir"]["medium"] == "Memory"
    config = _object("ConfigMap", "dilu-config")["data"]
    assert config["DILU_CUDA_SHIM"] == "on" and config["DILU_GPU_BACKEND"] == "nvml"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["DILU_WORKER_HOST"] == "$(POD_IP)"
