"""Record the real Chrome blobs in tests/fixtures/chrome/ (see its README.md).

    python -m tests.browser.record_chrome_blobs

Plays tests/fixtures/pauses.wav through tests/browser/capture.html in headless Chromium, with an
adaptive restart (stop() then start(2000)) in the second pause, and keeps every blob of the
first WebM stream up to and including the one stop() flushed, then the first blob of the new
stream. The page's requests go to a stub /asr/stream here (the bytes do not depend on it).
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

OUT = FIXTURES / "chrome"
WAV = "pauses.wav"
RESTART_AFTER_SECONDS = 9.5  # in the pause from 8.30 s to 9.80 s, ~0.3 s after a blob
EBML_MAGIC = b"\x1a\x45\xdf\xa3"


async def _stub(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"segments": []})


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
        "trailingSilenceSeconds": 0.5,
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
    for seq in range(restart + 1):
        name = f"seq{seq:02d}.webm-part"
        (OUT / name).write_bytes(data[seq])
        entries.append(
            {
                "seq": seq,
                "file": name,
                "bytes": len(data[seq]),
                "stream": int(seq >= restart),
                "sent_at_seconds": round(blobs[seq]["at"], 3),
                "sha256": hashlib.sha256(data[seq]).hexdigest(),
            }
        )
    manifest = {
        "chromium": chromium.chromium_version(chromium.find_chromium()),
        "user_agent": report["userAgent"],
        "flags": list(chromium.FLAGS),
        "audio": f"tests/fixtures/{WAV}",
        "audio_context_sample_rate": report["sampleRate"],
        "recorder": "new MediaRecorder(stream, {mimeType: 'audio/webm;codecs=opus', "
        "audioBitsPerSecond: 128000}); start(1000); stop() + start(2000) at the restart",
        "restart_after_seconds": RESTART_AFTER_SECONDS,
        "restart_seq": restart,
        "blobs": entries,
    }
    (OUT / "blobs.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(e["bytes"] for e in entries)
    print(f"wrote {len(entries)} blobs ({total} bytes) to {OUT}; restart at seq {restart}")


if __name__ == "__main__":
    save(asyncio.run(record()))
