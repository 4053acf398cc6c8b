from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

import pytest

from isweep_backend.settings import Settings, load_settings, parallelism


def test_defaults_bind_loopback_8001_with_the_bundled_model() -> None:
    s = load_settings([], {})
    assert (s.host, s.port, s.model) == ("127.0.0.1", 8001, "tiny.en")


def test_flags_beat_environment_which_beats_defaults() -> None:
    env = {"ISWEEP_PORT": "9000", "ISWEEP_MODEL": "base", "ISWEEP_SESSION_TTL_SECONDS": "5"}
    s = load_settings(["--port", "9100"], env)
    assert (s.port, s.model, s.session_ttl_seconds) == (9100, "base", 5.0)


def test_bad_values_are_refused_with_the_variable_named() -> None:
    with pytest.raises(ValueError, match="ISWEEP_PORT"):
        load_settings([], {"ISWEEP_PORT": "eighty"})
    with pytest.raises(ValueError, match="device"):
        Settings(device="tpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buffer_seconds"):
        Settings(buffer_seconds=5.0)


def test_parallelism_defaults_to_one_single_thread_pass_per_core() -> None:
    assert parallelism(Settings(), cores=2) == (2, 1)
    assert parallelism(Settings(), cores=16) == (4, 4)
    assert parallelism(Settings(inference_workers=1), cores=2) == (1, 2)
    assert parallelism(Settings(inference_workers=1, cpu_threads=3), cores=2) == (1, 3)


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_nan_and_infinity_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="reorder_wait_seconds must be a finite number"):
        load_settings([], {"ISWEEP_REORDER_WAIT_SECONDS": raw})
    with pytest.raises(ValueError, match="session_ttl_seconds must be a finite number"):
        load_settings([f"--session-ttl-seconds={raw}"], {})


def test_every_float_setting_is_checked_for_finiteness() -> None:
    floats = [f.name for f in dataclasses.fields(Settings) if isinstance(f.default, float)]
    assert len(floats) > 10
    for name in floats:
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            # The field is named at run time, so mypy cannot match the float to its type.
            Settings(**cast(dict[str, Any], {name: math.nan}))
