"""The benchmarks of isweep-backend, one package: run each from the repository root as
`python -m bench.<name>` (bench/README.md lists them and every figure they print).

Shared by every benchmark: `service` (start the service on a free loopback port and wait until
it is ready), `client` (the one `/asr/stream` request and its typed answer), `probes` (/proc
and /metrics readings of a running server), `streams` (a WAV sent as the extension sends it),
`stats` (percentiles, word timings, WER) and `report` (plain `name: value` lines and tables).
The real-time corpus has `corpus`, `textnorm` and `scoring`; `soak/` is the soak benchmark
split into its capture, runner, metrics and report.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the repository root, where the service runs
