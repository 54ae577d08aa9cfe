"""docker-compose.yml, Dockerfile, Prometheus and Grafana files agree with each other and the code.

Needs Debian's ``prometheus`` package (``promtool`` and the ``prometheus`` server): its absence
fails the tests instead of skipping them. A real Prometheus scrapes a loopback PipelineMetrics
and evaluates every dashboard query, so a query with a typo or a renamed metric fails here.

``docker compose config`` needs no Docker daemon but does need the compose plugin, which this
machine's docker CLI lacks; ``test_compose_config`` runs ``docker compose config`` or Debian's
``docker-compose`` (v1), which ``scripts/test.sh`` installs; with neither it fails. The
structural checks below run everywhere.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prom import MONITORING, exercised_metrics, query, tool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = MONITORING / "grafana" / "dashboards" / "feedback-stream.json"
DATASOURCE = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
# Grafana's macros, replaced by what Grafana would send for a short range.
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
METRIC = re.compile(r"\bfeedback_stream_[a-zA-Z0-9_:]*")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.extend(panel.get("panels", []))  # panels inside collapsed rows
        if panel["type"] != "row":
            found.append(panel)
    return found


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dashboard) for t in p["targets"]]


def promql(expr: str) -> str:
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    return expr


def exported_names() -> set[str]:
    """Family names (histograms) and sample names (``..._total``, ``..._bucket``, gauges)."""
    names: set[str] = set()
    for family in exercised_metrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


# --- docker-compose.yml and Dockerfile -----------------------------------------------------


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"kafka", "worker", "replay", "prometheus", "grafana"}

    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.0"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_LISTENERS"] == "PLAINTEXT://:9092,CONTROLLER://:9093"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert "healthcheck" in kafka

    for name in ("worker", "replay"):
        service = services[name]
        assert service["build"] == "."
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert service["environment"]["FEEDBACK_STREAM_BOOTSTRAP_SERVERS"] == "kafka:9092"

    worker = services["worker"]
    assert worker["command"] == ["feedback-stream", "worker"]
    assert worker["environment"]["FEEDBACK_STREAM_WEB_BIND"] == "0.0.0.0"
    assert worker["environment"]["FEEDBACK_STREAM_WEB_PORT"] == "6066"
    assert "6066:6066" in worker["ports"]

    replay = services["replay"]
    assert replay["command"] == [
        "feedback-stream", "produce", "data/sample.jsonl", "--bootstrap-servers", "kafka:9092"]
    assert replay["restart"] == "no"

    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert "9090:9090" in services["prometheus"]["ports"]
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    assert "3000:3000" in grafana["ports"]
    assert "prometheus" in grafana["depends_on"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Admin"


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    mounts = [
        volume.split(":")[:2]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
    ]
    assert mounts, "expected the monitoring config to be mounted"
    for host, _container in mounts:
        assert host.startswith("./"), f"{host}: bind mounts should be relative to the repo"
        assert (ROOT / host).exists(), f"mounted host path {host} does not exist"


def test_grafana_mounts_match_provisioning(compose: dict[str, Any]) -> None:
    targets = {
        container: host
        for host, container, *_ in (
            v.split(":") for v in compose["services"]["grafana"]["volumes"])
    }
    providers = load_yaml(PROVIDERS)["providers"]
    dashboards_dir = providers[0]["options"]["path"]
    assert (ROOT / targets[dashboards_dir] / DASHBOARD.name).samefile(DASHBOARD)
    assert (ROOT / targets["/etc/grafana/provisioning"]).samefile(
        MONITORING / "grafana" / "provisioning")
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^RUN pip install \.", text, re.M)
    assert re.search(r'^CMD \["feedback-stream", "worker"\]\s*$', text, re.M)


def test_compose_config(compose: dict[str, Any]) -> None:
    """``docker compose config`` (plugin) or Debian's ``docker-compose config``; no daemon."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        # `docker` may lack the compose plugin; docker-compose (the last choice, ~0.5 s to
        # start) is asked `config` directly, and a broken one fails the assert below.
        if command[0] == "docker" and subprocess.run(
                [*command, "version"], capture_output=True, timeout=30).returncode != 0:
            continue
        result = subprocess.run(
            [*command, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return
    pytest.fail("neither `docker compose` nor `docker-compose` is installed: "
                "apt-get install docker-compose (scripts/test.sh does)")


# --- Prometheus ----------------------------------------------------------------------------


def test_prometheus_config_scrapes_worker(compose: dict[str, Any]) -> None:
    config = load_yaml(MONITORING / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    port = compose["services"]["worker"]["environment"]["FEEDBACK_STREAM_WEB_PORT"]
    assert job["static_configs"][0]["targets"] == [f"worker:{port}"]

    result = subprocess.run(
        [tool("promtool"), "check", "config", str(MONITORING / "prometheus.yml")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_parse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": promql(expr)}
        for i, expr in enumerate(queries(dashboard))]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_real_prometheus_scrapes_and_answers_dashboard_queries(
    dashboard: dict[str, Any], scraped_metrics: str
) -> None:
    base = scraped_metrics  # started in the background after collection (tests/conftest.py)
    assert query(base, "up")["data"]["result"][0]["value"][1] == "1"
    for expr in queries(dashboard):
        answer = query(base, promql(expr))
        assert answer["status"] == "success", (expr, answer)
        if not expr.rstrip().endswith("> 0"):  # "> 0" hides idle series by design
            assert answer["data"]["result"], f"no data for {expr}"


# --- Grafana -------------------------------------------------------------------------------


def test_datasource_uid_matches_dashboard(dashboard: dict[str, Any]) -> None:
    (source,) = load_yaml(DATASOURCE)["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    expected = {"type": "prometheus", "uid": source["uid"]}
    for panel in panels(dashboard):
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        assert panel["targets"], f"panel {panel['title']!r} has no target"
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
    titles = " ".join(p["title"].lower() for p in panels(dashboard))
    for topic in ("throughput", "signal", "dead letter", "top-k", "latency", "processing",
                  "lag", "watermark", "state sizes", "eviction"):
        assert topic in titles


def test_dashboard_metrics_are_exported(dashboard: dict[str, Any]) -> None:
    exported = exported_names()
    used: set[str] = set()
    for expr in queries(dashboard):
        names = METRIC.findall(expr)
        assert names, f"query uses no feedback_stream_ metric: {expr}"
        used.update(names)
    for name in used:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in exported or base in exported, f"{name} is not exported by PipelineMetrics"
    # And the other way round: every pipeline metric is on the dashboard somewhere.
    families = {
        f.name for f in exercised_metrics().registry.collect()
        if f.name.startswith("feedback_stream_")
    }
    unused = {f for f in families if not any(u.startswith(f) for u in used)}
    assert not unused, f"metrics missing from the dashboard: {sorted(unused)}"
