"""The Dockerfile: a non-root image on all interfaces with a health check, copying only files that
exist and that .dockerignore lets through. (test_live_stack.py runs the health check.)"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from tests.observability_tools import ROOT, healthcheck_command


def _docker_ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [path, *(str(Path(path).parents[i]) for i in range(path.count("/")))]
        if any(fnmatch.fnmatch(c, pattern) for c in candidates):
            ignored = not negated
    return ignored


def test_dockerfile_runs_non_root_on_all_interfaces_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim", dockerfile, re.M)
    user = re.findall(r"^USER (\S+)", final_stage, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert "ISWEEP_HOST=0.0.0.0" in final_stage
    assert re.search(r"^RUN pip install \.$", dockerfile, re.M)  # the README's install
    assert 'CMD ["python", "-m", "isweep_backend"]' in final_stage  # the README's run
    script = healthcheck_command()[-1]
    assert "/healthz" in script and "urllib" in script
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        src
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M)
        for src in line.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _docker_ignored(source, patterns), source
    for left_out in (".venv", "tests/fixtures/long.wav", ".git"):
        assert _docker_ignored(left_out, patterns), left_out
