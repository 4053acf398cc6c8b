"""The README is the front door: its commands and settings table must stay true."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from isweep_backend.settings import Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _setup_commands() -> list[str]:
    section = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    install_and_run, run_tests = _setup_commands()
    assert "python -m isweep_backend" in install_and_run
    assert "pytest" in run_tests
    assert run_tests in (ROOT / ".ci" / "run").read_text()


def test_every_setting_is_documented_with_its_flag_and_variable() -> None:
    for field in dataclasses.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        assert f"`{flag}`" in README and f"`{env_name(field.name)}`" in README, field.name
