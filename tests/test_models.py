"""Model names resolve to real, loadable models without any download."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from isweep_backend.engine import Engine, PassRequest
from isweep_backend.errors import ModelNotFound
from isweep_backend.models import join_split_base, resolve_model
from isweep_backend.settings import Settings
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
    result = engine.run_pass(PassRequest(speech.pcm[: 16000 * 4], 0, "", None))
    assert result.language == "en"
    assert "children" in "".join(w.text for w in result.words).lower()
    forced = Engine(replace(settings, language="de"), engine._model, engine.info)
    assert forced.session_language() == "de"
    silence = np.zeros(16000 * 2, dtype=np.float32)
    assert engine.run_pass(PassRequest(silence, 0, "", None)).skipped_by_vad
