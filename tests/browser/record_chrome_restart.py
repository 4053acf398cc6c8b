"""Record the real Chrome blobs in tests/fixtures/chrome-restart/ (see its README.md).

    python -m tests.browser.record_chrome_restart

Plays tests/fixtures/pauses.wav through tests/browser/capture.html in headless Chromium with
the extension's adaptive restart exactly as the extension does it: start(1000), then, between
two blobs, stop() and at once start(2000) on the same stream, and the blob stop() flushed is
dropped (seq shows no hole). Keeps every sent blob and when the page had it. The page's
requests go to a stub /asr/stream here (the bytes do not depend on it).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.audio_tools import FIXTURES
from tests.browser import chromium
from tests.browser.record_chrome_blobs import EBML_MAGIC, _stub

OUT = FIXTURES / "chrome-restart"
WAV = "pauses.wav"
# In the pause from 3.60 s to 5.10 s, ~0.6 s after the fourth blob: the dropped blob is long.
RESTART_AFTER_SECONDS = 4.6


async def record() -> dict[str, Any]:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/asr/stream", _stub)
    app.router.add_static("/browser/", chromium.PAGE_DIR)
    app.router.add_static("/fixtures/", FIXTURES)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    options = {
        "audioUrl": f"/fixtures/{WAV}",
        "restartAfterSeconds": RESTART_AFTER_SECONDS,
        "dropStopBlob": True,
        "trailingSilenceSeconds": 2.0,
        "keepBlobs": True,
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with chromium.launch(Path(tmp) / "profile") as page:
                url = f"http://127.0.0.1:{port}/browser/capture.html"
                await page.goto(url, "window.isweepReady")
                report: dict[str, Any] = await page.evaluate(
                    f"isweepCapture({json.dumps(options)})", timeout=120
                )
    finally:
        await runner.cleanup()
    return report


def save(report: dict[str, Any]) -> None:
    blobs = sorted(report["blobs"], key=lambda b: b["seq"])
    data = [base64.b64decode(b["b64"]) for b in blobs]
    restart = next(seq for seq, blob in enumerate(data) if seq and blob.startswith(EBML_MAGIC))
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("seq*.webm-part"):
        old.unlink()
    entries = []
    for seq, blob in enumerate(data):
        name = f"seq{seq:02d}.webm-part"
        (OUT / name).write_bytes(blob)
        entries.append(
            {
                "seq": seq,
                "file": name,
                "bytes": len(blob),
                "stream": int(seq >= restart),
                "sent_at_seconds": round(blobs[seq]["at"], 3),
                "sha256": hashlib.sha256(blob).hexdigest(),
            }
        )
    manifest = {
        "chromium": chromium.chromium_version(chromium.find_chromium()),
        "user_agent": report["userAgent"],
        "flags": list(chromium.FLAGS),
        "audio": f"tests/fixtures/{WAV}",
        "audio_context_sample_rate": report["sampleRate"],
        "recorder": "new MediaRecorder(stream, {mimeType: 'audio/webm;codecs=opus', "
        "audioBitsPerSecond: 128000}); start(1000); at the restart stop() + start(2000), "
        "the blob stop() flushed dropped as the extension drops it",
        "restart_after_seconds": RESTART_AFTER_SECONDS,
        "restart_called_at_seconds": round(report["restartAt"], 3),
        "dropped_stop_blob": {
            "at_seconds": round(report["droppedAt"], 3),
            "bytes": report["droppedBytes"],
        },
        "restart_seq": restart,
        "blobs": entries,
    }
    (OUT / "blobs.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(e["bytes"] for e in entries)
    print(f"wrote {len(entries)} blobs ({total} bytes) to {OUT}; restart at seq {restart}")


if __name__ == "__main__":
    save(asyncio.run(record()))
