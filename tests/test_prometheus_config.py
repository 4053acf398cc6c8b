"""ops/prometheus.yml and ops/alerts.yml, checked by promtool, the tool that loads them, and the
alert rules' own unit tests (ops/alerts.test.yml)."""

from __future__ import annotations

import subprocess

import yaml

from tests.observability_tools import OPS, ROOT, alert_rules, binary


def run_promtool(*args: str) -> str:
    proc = subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_promtool_accepts_the_prometheus_config() -> None:
    run_promtool("check", "config", "ops/prometheus.yml")


def test_promtool_accepts_the_alert_rules() -> None:
    run_promtool("check", "rules", "ops/alerts.yml")


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    run_promtool("test", "rules", "ops/alerts.test.yml")


def test_every_alert_has_a_firing_and_a_quiet_case_in_its_unit_tests() -> None:
    tests = yaml.safe_load((OPS / "alerts.test.yml").read_text())["tests"]
    expected: dict[str, list[int]] = {}
    for case in tests:
        for check in case.get("alert_rule_test", []):
            expected.setdefault(check["alertname"], []).append(len(check["exp_alerts"]))
        # Each case has an instance that must not alert: "b" series exist and never fire.
        assert any('instance="b:8001"' in s["series"] for s in case["input_series"]), case
    alerts = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    assert set(expected) == alerts
    for name, counts in expected.items():
        assert any(counts), f"{name} never fires in its tests"
