"""The benchmarks of isweep-backend, one package: run each from the repository root as
`python -m bench.<name>` (bench/README.md lists them and every figure they print).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the repository root, where the service runs
