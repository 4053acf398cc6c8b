"""The README is the front door: its commands, its settings table, and its tables of log events
and metrics must stay true."""

from __future__ import annotations

import ast
import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from isweep_backend.metrics import Metrics
from isweep_backend.settings import Settings, env_name
from tests.observability_tools import PACKAGE

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
INSTALL_TEST_DEPS = "ops/install-test-deps.sh"


def _setup_commands() -> list[str]:
    section = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    install_and_run, run_tests = _setup_commands()
    assert "python -m isweep_backend" in install_and_run
    # One copyable line that installs what the tests need first, then runs them.
    assert "\n" not in run_tests
    assert run_tests.startswith(f"bash {INSTALL_TEST_DEPS} && ")
    assert run_tests.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert run_tests in ci
    # System packages are installed in one place, the script both commands call.
    assert "apt-get" not in ci


def run_install_test_deps(path: Path) -> subprocess.CompletedProcess[str]:
    """The script with only `path` on PATH: no apt-get there, so it reports and never installs."""
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run(
        [bash, INSTALL_TEST_DEPS],
        cwd=ROOT,
        env={"PATH": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_install_test_deps_stops_and_names_the_packages_when_nothing_is_installed(
    tmp_path: Path,
) -> None:
    done = run_install_test_deps(tmp_path)
    assert done.returncode == 1
    assert (
        "sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium prometheus"
        in done.stderr
    )
    # haproxy is either named with them or, where Debian has put it in /usr/sbin, the PATH to add.
    assert "haproxy" in done.stderr


def test_install_test_deps_names_only_the_packages_that_are_missing(tmp_path: Path) -> None:
    # The real chromium, promtool and haproxy on PATH, but no prometheus: only its package is due.
    for program in ("chromium", "promtool", "haproxy"):
        found = shutil.which(program)
        if found is None:
            pytest.fail(f"{program} is not installed: run bash {INSTALL_TEST_DEPS}")
        (tmp_path / program).symlink_to(found)
    done = run_install_test_deps(tmp_path)
    assert done.returncode == 1
    assert "which are not installed: prometheus\n" in done.stderr
    assert "--no-install-recommends prometheus\n" in done.stderr
    assert "chromium" not in done.stderr and "haproxy" not in done.stderr


def test_every_setting_is_documented_with_its_flag_and_variable() -> None:
    for field in dataclasses.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        assert f"`{flag}`" in README and f"`{env_name(field.name)}`" in README, field.name


LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def logged_events() -> dict[str, set[str]]:
    """Every event name the package logs (`log.<level>("name", field=...)`), with its fields."""
    events: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                continue
            fields = {kw.arg for kw in node.keywords if kw.arg is not None}
            events.setdefault(node.args[0].value, set()).update(fields)
    return events


def test_readme_documents_every_log_event_with_its_fields_and_every_metric() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = {
        match.group(1): match.group(0)
        for match in re.finditer(r"^\| `([a-z_]+)` \|.*$", readme, re.M)
    }
    for event, fields in logged_events().items():
        assert event in rows, f"log event {event!r} is not in the README's event table"
        for name in fields:
            assert f"`{name}`" in rows[event], f"field {name!r} of {event!r} is not in README"
    m = Metrics()
    for family in m.registry.collect():
        if family.name.startswith("isweep_"):
            exposed = family.name + ("_total" if family.type == "counter" else "")
            exposed += "_info" if family.type == "info" else ""
            assert f"`{exposed}`" in readme, f"metric {exposed} is not in the README"


def test_the_layout_map_names_every_module_of_the_package() -> None:
    layout = README.split("## Layout", 1)[1].split("```", 2)[1]
    # Each line of the map is "  name.py   its job", indented one step per folder.
    listed: set[str] = set()
    folders: list[str] = []
    for line in layout.splitlines():
        match = re.match(r"( *)(\S+)", line)
        if match is None:
            continue
        depth, name = len(match.group(1)) // 2, match.group(2)
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name)
        elif name.endswith(".py"):
            listed.add("".join(folders) + name)
    modules = {
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
    }
    assert modules - listed == set(), "modules missing from the README's layout map"
    assert listed - modules == set(), "the README's layout map names modules that do not exist"
