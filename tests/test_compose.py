"""ops/compose.yaml wires the service, Prometheus and Grafana together with files that exist."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import yaml

from tests.observability_tools import GRAFANA, JOB, OPS, ROOT


def test_compose_wires_service_prometheus_and_grafana_with_files_that_exist() -> None:
    compose = yaml.safe_load((OPS / "compose.yaml").read_text())
    services = compose["services"]
    assert {"isweep-backend", "prometheus", "grafana"} <= set(services)
    mounts: dict[str, str] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (OPS / source).resolve().exists(), source
                mounts[(OPS / source).resolve().relative_to(ROOT).as_posix()] = target
    assert (OPS / services[JOB]["build"]["context"] / "Dockerfile").resolve().exists()
    # Prometheus loads its config and the rules it names from where compose mounts them.
    config_dir = Path(mounts["ops/prometheus.yml"]).parent
    for rule_file in yaml.safe_load((OPS / "prometheus.yml").read_text())["rule_files"]:
        assert mounts[f"ops/{rule_file}"] == (config_dir / rule_file).as_posix()
    # Prometheus scrapes the compose service on the port the image listens on.
    job = next(
        j
        for j in yaml.safe_load((OPS / "prometheus.yml").read_text())["scrape_configs"]
        if j["job_name"] == JOB
    )
    port = re.search(r"ISWEEP_PORT=(\d+)", (ROOT / "Dockerfile").read_text())
    assert port is not None
    # Every replica of the service, found by its DNS name (one address per container).
    assert services[JOB]["deploy"]["replicas"] >= 2
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == [JOB] and discovery["port"] == int(port.group(1))
    # Grafana finds the provisioning and the dashboards where compose mounts them.
    assert mounts["grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "isweep-backend.yml").read_text()
    )["providers"][0]
    assert mounts["grafana/dashboards"] == provider["options"]["path"]
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert urllib.parse.urlsplit(datasource["url"]).hostname in services
