"""For the monitoring tests: a real Prometheus server (Debian's ``prometheus``) on loopback, and
PipelineMetrics with every series present."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream.stats import EngineStats
from topologies.metrics import PipelineMetrics
from topologies.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "monitoring"
MISSING = (
    "{} not found on PATH: install Debian's Prometheus (`apt-get install -y prometheus`); "
    "CI installs it"
)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(MISSING.format(name))
    return path


def loopback_config(target: str) -> dict[str, Any]:
    """The shipped prometheus.yml, scraping ``target`` on loopback every 500 ms."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "500ms"
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [target]}]
    return config


def query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:  # 400 carries the PromQL error as JSON
        return json.load(error)


@contextlib.contextmanager
def prometheus_scraping(target: str, tmp_path: Path, scrapes: int = 2) -> Iterator[str]:
    """Run Prometheus scraping ``target`` (host:port); yields its base URL once it has
    scraped ``scrapes`` times (rate() needs two samples in its window)."""
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(loopback_config(target)))
    subprocess.run([tool("promtool"), "check", "config", str(config)], check=True,
                   capture_output=True, timeout=60)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "prometheus.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert process.poll() is None, log_path.read_text()[-3000:]
                try:
                    result = query(base, "count_over_time(up[1m])")["data"]["result"]
                    if result and float(result[0]["value"][1]) >= scrapes:
                        break
                except (OSError, ValueError, KeyError):
                    pass  # not up yet; while starting it answers 503 with a plain-text body
                assert time.monotonic() < deadline, "Prometheus did not scrape in 120 s"
                time.sleep(0.25)
            yield base
        finally:
            process.terminate()
            process.wait(timeout=30)


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in Prometheus text whose labels include ``labels``."""
    total = 0.0
    for match in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def exercised_metrics(m: PipelineMetrics | None = None) -> PipelineMetrics:
    """``m`` (default: one on a bare registry) with a value in every series, each recording
    method called once; the top defect holds characters the text format must escape."""
    m = m or PipelineMetrics(CollectorRegistry())
    stats = EngineStats()
    stats.events[("turn", "ok")] = 3
    stats.events[("unknown", "dead_letter")] = 1
    stats.dead_letters["invalid_json"] = 1
    stats.signals["rephrase"] = 1
    stats.failure_points["nlu"] = 1
    stats.evictions["device"] = 1
    m.sync_stats(stats)
    m.observe_batch(3, 0.0003)
    m.observe_processing_latency([1.0], 2.0)
    m.observe_event_time_lag([60_000])
    m.set_lag("interactions", 0, 1)
    m.set_watermark_delay(0.5)
    m.set_state_sizes(1, {"utterance": 1}, 2)
    m.set_top_defects([('play "jazz"\\ now\n', 0.5, 10)])  # characters that need escaping
    m.producer_error("feedback.defects")
    m.producer_retry()
    m.stranded_rewinds.inc()
    return m
