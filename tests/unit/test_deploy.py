"""deploy/ as an operator gets it: the systemd units verify, the Kubernetes manifests validate and their config passes
check-config, the alert rules pass promtool (and fire on the series they are for), the Dockerfile copies only what
exists. That every metric the dashboard and the rules name is served is tests/integration/test_operations.py's."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from daemon.cli import main
from daemon.core.validate import load_config
from tests.helpers import ADMIN_TOKEN

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "kubernetes" / "base"
WEBHOOK_ROUTER = Path(sys.executable).with_name("webhook-router")


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed: apt-get install {package} (make test does)"
    return path


# --- systemd ---


@pytest.mark.parametrize("unit", ["webhook-router.service", "webhook-router@.service"])
def test_the_systemd_units_verify_cleanly(unit: str, tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze", "systemd")
    text = (DEPLOY / "systemd" / unit).read_text()
    # verify checks that the commands exist: point them at this environment's installed command.
    (tmp_path / unit).write_text(text.replace("/opt/webhook-router/bin/webhook-router", str(WEBHOOK_ROUTER)))
    names = [unit] if "@" not in unit else [unit, unit.replace("@", "@a")]
    if "@" in unit:
        (tmp_path / names[1]).write_text((tmp_path / unit).read_text())
    for name in names:
        done = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / name)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip() == "", done.stderr  # unknown keys are only warnings: none allowed


def test_the_systemd_unit_runs_as_a_user_that_can_read_its_config_and_asks_for_the_watchdog() -> None:
    for unit in ("webhook-router.service", "webhook-router@.service"):
        settings = _unit_settings(DEPLOY / "systemd" / unit)
        assert settings["Type"] == ["notify"]
        assert settings["User"] == ["webhook-router"] and settings["Group"] == ["webhook-router"]
        assert "DynamicUser" not in settings and "ConfigurationDirectory" not in settings
        assert settings["WatchdogSec"] == ["30s"]
        assert settings["RestartPreventExitStatus"] == ["2"]
        assert _seconds(settings["TimeoutStopSec"][0]) > 25  # the longest drain
    sysusers = (DEPLOY / "systemd" / "webhook-router.sysusers").read_text()
    assert re.search(r"^u webhook-router ", sysusers, re.M)
    install = (DEPLOY / "systemd" / "webhook-router.service").read_text()
    assert "install -m 0640 -g webhook-router config/examples/router.toml /etc/webhook-router/router.toml" in install
    assert "install -d -m 0750 -g webhook-router /etc/webhook-router" in install


def _unit_settings(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def _seconds(value: str) -> float:
    return float(value.removesuffix("s"))


# --- Kubernetes ---


def _kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return loaded


def _resources() -> list[dict[str, Any]]:
    docs = []
    for name in _kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return docs


def _kind(kind: str) -> dict[str, Any]:
    (found,) = [d for d in _resources() if d["kind"] == kind]
    return found


def test_every_manifest_of_the_kustomize_base_validates() -> None:
    docs = _resources()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PodMonitor", "PodDisruptionBudget", "NetworkPolicy"}
    assert "Secret" not in {d["kind"] for d in docs}, "the Secret is referenced, never shipped"
    for doc in docs:
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # a CRD: kubernetes-validate has no schema for it (checked against the Deployment below)
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_the_kustomize_base_config_passes_check_config_and_the_pods_carry_its_hash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (generator,) = _kustomization()["configMapGenerator"]
    assert generator["name"] == "webhook-router-config"
    (name,) = generator["files"]
    path = BASE / name
    for variable in ("ADMIN_TOKEN", "CRM_MAIN_WEBHOOK_SECRET", "ANALYTICS_WEBHOOK_SECRET"):
        monkeypatch.setenv(variable, "whsec_" + "A" * 44 if "SECRET" in variable else ADMIN_TOKEN)
    assert main(["check-config", str(path)]) == 0, capsys.readouterr().err
    config = load_config(path)

    pod = _kind("Deployment")["spec"]["template"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert pod["metadata"]["annotations"]["webhook-router/config-sha256"] == digest, "update the annotation"
    spec = pod["spec"]
    assert spec["terminationGracePeriodSeconds"] > config.delivery.drain_timeout_s + 5
    (container,) = spec["containers"]
    assert {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v} == {"webhook-router-config"}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert container["args"] == ["run", "--config", f"{mount['mountPath']}/{name}"]
    assert container["envFrom"] == [{"secretRef": {"name": "webhook-router-secrets"}}]
    port = config.admin.listen.rsplit(":", 1)[1]
    assert container["ports"] == [{"name": "admin", "containerPort": int(port), "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def _cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


def test_the_pods_cpus_are_the_workers_the_config_asks_for() -> None:
    """process.workers = "auto" counts the whole CPUs of the cgroup's quota (limits.cpu): requests equal to limits, a
    whole number of CPUs, and memory for each worker."""
    (generator,) = _kustomization()["configMapGenerator"]
    workers = tomllib.loads((BASE / generator["files"][0]).read_text())["process"]["workers"]
    (container,) = _kind("Deployment")["spec"]["template"]["spec"]["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    cpus = _cpus(limits["cpu"])
    assert _cpus(requests["cpu"]) == cpus and cpus == int(cpus) >= 2, "whole CPUs, as many as requested"
    assert workers == "auto" or workers == cpus
    assert requests["memory"] == limits["memory"] and _bytes(limits["memory"]) >= int(cpus) * 256 << 20


def test_the_example_config_runs_a_worker_per_cpu() -> None:
    example = tomllib.loads((ROOT / "config" / "examples" / "router.toml").read_text())
    assert example["process"]["workers"] == "auto"


def test_the_service_pod_monitor_budget_and_network_policy_select_the_router_pods() -> None:
    labels = _kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        _kind("Service")["spec"]["selector"],
        _kind("PodMonitor")["spec"]["selector"]["matchLabels"],
        _kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        _kind("NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= labels.items()
    (endpoint,) = _kind("PodMonitor")["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    (rule,) = _kind("NetworkPolicy")["spec"]["ingress"]
    assert rule["ports"] == [{"port": "admin", "protocol": "TCP"}]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its kustomize) is not installed here")
def test_the_kustomize_base_builds_into_manifests_that_validate(tmp_path: Path) -> None:
    kubectl = _tool("kubectl", "kubectl")
    built = subprocess.run([kubectl, "kustomize", str(BASE)], capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(built) if d]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert re.fullmatch(r"webhook-router-config-[a-z0-9]{10}", config_map["metadata"]["name"])
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert config_map["metadata"]["name"] in [v.get("configMap", {}).get("name") for v in volumes]
    for doc in docs:
        if doc["apiVersion"] != "monitoring.coreos.com/v1":
            kubernetes_validate.validate(doc, "1.30", strict=True)


# --- Prometheus ---


def test_the_alert_rules_pass_promtool_and_fire_on_the_series_they_are_for() -> None:
    promtool = _tool("promtool", "prometheus")
    rules = DEPLOY / "prometheus" / "webhook-router-alerts.yml"
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts-test.yml"], cwd=ROOT / "tests" / "data", capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    names = {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]}
    tested_names = set(re.findall(r"alertname: (\w+)", (ROOT / "tests" / "data" / "alerts-test.yml").read_text()))
    must = {"WebhookRouterLagGrowing", "WebhookRouterDeliveryFailureRatio", "WebhookRouterEndpointPaused",
            "WebhookRouterReloadFailed", "WebhookRouterDeadLetters", "WebhookRouterStuckPartition",
            "WebhookRouterEndpointFailing"}  # fmt: skip
    assert must <= names
    assert names == tested_names  # every alert has a case that makes it fire


def test_the_dashboard_is_grafana_json_with_a_query_in_every_panel() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "webhook-router.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    for panel in panels:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


# --- the image ---


def dockerfile_copies() -> list[str]:
    """The sources of the Dockerfile's COPY lines from the build context (not from an earlier stage)."""
    sources = []
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def test_the_dockerfile_copies_files_that_exist_and_dockerignore_lets_them_through() -> None:
    sources = dockerfile_copies()
    assert sources == ["pyproject.toml", "README.md", "constraints.txt", "daemon"]
    for source in sources:
        assert (ROOT / source).exists(), source
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"}
    assert set(sources) <= allowed
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", text, re.M) and "HEALTHCHECK" in text and "/healthz" in text
