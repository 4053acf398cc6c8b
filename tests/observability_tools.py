"""What the observability tests share: where the ops files are, the readers of the dashboard,
the alert rules and the Dockerfile's health check, the Prometheus text format, and the
Prometheus programs.

Prometheus and promtool come from the Debian package `prometheus` (CI installs it); a test that
cannot find them fails rather than skips.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "isweep_backend"
OPS = ROOT / "ops"
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "isweep-backend.json"
JOB = "isweep-backend"
INSTANCE_ALL = ".+"  # the dashboard's `instance` variable when "All" is chosen
# Distinctive, so finding it in a log line or in /metrics cannot be a coincidence.
USER_ID = "user-7f3c9a51-observability"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get update && apt-get install -y prometheus")
    return path


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text format -> {(sample name, sorted labels): value}."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard, rows' nested panels included,
    with the `instance` variable at its "All" value, as Grafana sends it to Prometheus."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"].replace("$instance", INSTANCE_ALL)
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((OPS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def healthcheck_command() -> list[str]:
    match = re.search(
        r"^HEALTHCHECK .*?CMD (\[.*?\])$", (ROOT / "Dockerfile").read_text(), re.M | re.S
    )
    assert match is not None
    command: list[str] = json.loads(match.group(1))
    return command
