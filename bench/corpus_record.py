"""Record the real-time corpus's blobs (bench/corpus/) through headless Chromium's MediaRecorder.

    python -m bench.corpus_sources --packages PKG --out SRC
    python -m bench.corpus_record --sources SRC [--only NAME ...]

Plays each source WAV through bench/corpus_record.html with the extension's recorder options
(audio/webm;codecs=opus, 128 kbit/s, start(1000); stop() + start(2000) at a restart) and writes
`bench/corpus/<name>.webm-parts` (every blob, in order, back to back) and `<name>.json` (the
index: each blob's byte range, arrival time, stream, and whether the extension would send it).
Then run `python -m bench.corpus_reference` to add the reference words.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.browser import chromium

BENCH = Path(__file__).resolve().parent
CORPUS = BENCH / "corpus"
RECORDER = (
    "new MediaRecorder(stream, {mimeType: 'audio/webm;codecs=opus', audioBitsPerSecond: "
    "128000}); start(1000); at a restart stop() then start(2000) at once, the blob stop() "
    "flushes marked dropped"
)


async def record(sources: Path, name: str, restart_after: float | None) -> dict[str, Any]:
    app = web.Application()
    app.router.add_static("/bench/", BENCH)
    app.router.add_static("/sources/", sources)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    options = {"audioUrl": f"/sources/{name}.wav", "restartAfterSeconds": restart_after}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with chromium.launch(Path(tmp) / "profile") as page:
                await page.goto(
                    f"http://127.0.0.1:{port}/bench/corpus_record.html", "window.isweepReady"
                )
                report: dict[str, Any] = await page.evaluate(
                    f"isweepRecord({json.dumps(options)})", timeout=300
                )
    finally:
        await runner.cleanup()
    if report["errors"]:
        raise RuntimeError(f"{name}: {report['errors']}")
    return report


def save(name: str, meta: dict[str, Any], report: dict[str, Any]) -> None:
    parts = bytearray()
    entries = []
    seq = 0
    for blob in report["blobs"]:
        data = base64.b64decode(blob["b64"])
        assert len(data) == blob["size"], (name, blob["size"], len(data))
        entries.append(
            {
                "seq": None if blob["dropped"] else seq,
                "offset": len(parts),
                "bytes": len(data),
                "at_seconds": round(blob["at"], 4),
                "stream": blob["stream"],
                "dropped": blob["dropped"],
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        seq += 0 if blob["dropped"] else 1
        parts += data
    index = {
        **meta,
        "parts_file": f"{name}.webm-parts",
        "parts_sha256": hashlib.sha256(parts).hexdigest(),
        "chromium": chromium.chromium_version(chromium.find_chromium()),
        "user_agent": report["userAgent"],
        "recorder": RECORDER,
        "recorder_mime_type": report["recorderMimeType"],
        "audio_context_sample_rate": report["sampleRate"],
        "recorder_started_at_seconds": round(report["startedAt"], 4),
        "restart_at_seconds": None
        if report["restartAt"] is None
        else round(report["restartAt"], 4),
        "playback_ended_at_seconds": round(report["playbackEndedAt"], 4),
        "blobs": entries,
    }
    (CORPUS / f"{name}.webm-parts").write_bytes(bytes(parts))
    (CORPUS / f"{name}.json").write_text(json.dumps(index, indent=1) + "\n")
    dropped = sum(e["dropped"] for e in entries)
    print(f"{name}: {len(entries)} blobs ({dropped} dropped), {len(parts)} bytes")


async def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.corpus_record", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sources", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    CORPUS.mkdir(exist_ok=True)
    for meta_path in sorted(args.sources.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        if args.only and meta["name"] not in args.only:
            continue
        report = await record(args.sources, meta["name"], meta["restart_after_seconds"])
        save(meta["name"], meta, report)


if __name__ == "__main__":
    asyncio.run(main())
