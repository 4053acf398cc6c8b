// Records a speech file the way the ISweep extension records a tab (docs: client.md) and
// streams every blob to /asr/stream the way the extension does. tests/test_browser.py drives it
// over the DevTools protocol: `await window.isweepCapture({...})` resolves to a report.
//
// Audio path: fetch + decodeAudioData -> AudioBufferSourceNode -> MediaStreamAudioDestinationNode
// (a live stereo MediaStream, like chrome.tabCapture's) -> MediaRecorder(webm/opus, 128 kbit/s),
// start(1000). Requests overlap: each blob is POSTed as soon as it is read, never awaiting the
// previous request. An adaptive restart is stop() then start(2000) on the same stream, exactly
// as the extension does when round trips are slow: a new WebM stream, seq keeps counting.
'use strict';

const MIME_TYPE = 'audio/webm;codecs=opus';

function blobToBase64(blob) {
  // What an extension does with a Blob: a data: URL without its prefix.
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(',', 2)[1] || '');
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function isweepCapture(options) {
  const {
    audioUrl,
    userId = 'browser-user',
    tabId = 1,
    restartAfterSeconds = null,
    trailingSilenceSeconds = 2.0,
    keepBlobs = false,
    endpoint = '/asr/stream',
    // The extension's ondataavailable returns early while isRestarting is set, so the blob
    // that the restart's stop() flushes is never sent, and seq shows no hole for it.
    dropStopBlob = false,
  } = options;
  const report = {
    userAgent: navigator.userAgent,
    blobs: [],
    responses: [],
    errors: [],
    restartAt: null,
  };
  // 48 kHz like a tab's audio; Chromium's headless default is the fake device's 44.1 kHz.
  const ctx = new AudioContext({sampleRate: 48000});
  await ctx.resume();
  report.sampleRate = ctx.sampleRate;
  report.contextState = ctx.state;
  const encoded = await (await fetch(audioUrl)).arrayBuffer();
  const buffer = await ctx.decodeAudioData(encoded);
  report.audioSeconds = buffer.duration;

  const source = ctx.createBufferSource();
  source.buffer = buffer;
  const destination = ctx.createMediaStreamDestination();
  source.connect(destination);
  // A tab's stream never stops flowing: it carries silence when nothing plays. A node with no
  // active input stops feeding the MediaStream (the recording would just end with the speech),
  // so a silent constant source keeps audio flowing from start to stop.
  const keepAlive = ctx.createConstantSource();
  keepAlive.offset.value = 0;
  keepAlive.connect(destination);
  const stream = destination.stream;

  const recorder = new MediaRecorder(stream, {mimeType: MIME_TYPE, audioBitsPerSecond: 128000});
  report.recorderMimeType = recorder.mimeType;
  let seq = 0;
  let interval = 1.0;
  let isRestarting = false;
  const requests = [];
  const t0 = performance.now();
  const now = () => (performance.now() - t0) / 1000;

  async function send(mySeq, blob, chunkStart) {
    const audioB64 = await blobToBase64(blob);
    const entry = {seq: mySeq, size: blob.size, at: now(), head: audioB64.slice(0, 8)};
    if (keepBlobs) entry.b64 = audioB64;
    report.blobs.push(entry);
    const body = JSON.stringify({
      user_id: userId,
      tab_id: tabId,
      seq: mySeq,
      chunk_start_seconds: chunkStart,
      mime_type: MIME_TYPE,
      audio_b64: audioB64,
    });
    const sentAt = now();
    try {
      const resp = await fetch(endpoint, {
        method: 'POST',
        headers: {'Content-Type': 'application/json'},
        body,
      });
      const text = await resp.text();
      let json = null;
      try { json = JSON.parse(text); } catch (e) { /* kept as text below */ }
      report.responses.push({
        seq: mySeq, status: resp.status, sentAt, receivedAt: now(),
        segments: json && Array.isArray(json.segments) ? json.segments : null,
        body: json && Array.isArray(json.segments) ? null : text.slice(0, 500),
      });
    } catch (e) {
      report.errors.push(`seq ${mySeq}: ${e}`);
    }
  }

  recorder.ondataavailable = (event) => {
    if (isRestarting) {
      report.droppedAt = now();
      report.droppedBytes = event.data.size;
      return;
    }
    const mySeq = seq++;
    // Not awaited: requests overlap and may finish out of order, as in the extension.
    requests.push(send(mySeq, event.data, mySeq * interval));
  };
  recorder.onerror = (event) => report.errors.push(`recorder: ${event.error || event}`);
  const stopped = () => new Promise((resolve) => {
    recorder.addEventListener('stop', resolve, {once: true});
  });

  const ended = new Promise((resolve) => { source.onended = resolve; });
  keepAlive.start();
  source.start();
  recorder.start(1000);
  report.startedAt = now();

  if (restartAfterSeconds !== null) {
    await sleep(restartAfterSeconds * 1000);
    // The extension's adaptive restart: stop() then start(2000) on the same stream, at once.
    report.restartAt = now();
    report.restartContextTime = ctx.currentTime;
    if (dropStopBlob) {
      isRestarting = true;
      // The old recording's stop event comes after its last dataavailable.
      recorder.addEventListener('stop', () => { isRestarting = false; }, {once: true});
    }
    recorder.stop();
    interval = 2.0;
    recorder.start(2000);
  }
  await ended;
  report.playbackEndedAt = now();
  await sleep(trailingSilenceSeconds * 1000);
  const done = stopped();
  recorder.stop();
  await done;
  report.stoppedAt = now();
  await Promise.allSettled(requests);
  report.lastSeq = seq - 1;
  keepAlive.stop();
  stream.getTracks().forEach((track) => track.stop());
  await ctx.close();
  return report;
}

window.isweepCapture = isweepCapture;
window.isweepReady = true;
