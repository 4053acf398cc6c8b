"""The Grafana dashboard's queries: against the provisioned datasource, with no Grafana
variables left for Prometheus to choke on. (test_live_stack.py runs every one of them.)"""

from __future__ import annotations

import json

import yaml

from tests.observability_tools import DASHBOARD, GRAFANA, JOB, dashboard_queries


def test_dashboard_queries_use_the_provisioned_datasource_and_plain_ranges() -> None:
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    uids = {d["uid"] for d in provisioned if d["type"] == "prometheus"}
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]
    queries = dashboard_queries()
    assert len(queries) >= 20
    for title, expr in queries:
        assert "$" not in expr, (title, expr)  # no Grafana variables: Prometheus runs them as-is
        assert f'job="{JOB}"' in expr, (title, expr)
