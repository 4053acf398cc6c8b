// Records one source WAV the way the ISweep extension records a tab (docs: client.md) and keeps
// every blob with the time it became available; bench/corpus_record.py drives it over the
// DevTools protocol. Nothing is POSTed: the bytes do not depend on the server.
//
// Audio path: fetch + decodeAudioData -> AudioBufferSourceNode -> MediaStreamAudioDestinationNode
// (a live stereo MediaStream, like chrome.tabCapture's) -> MediaRecorder(webm/opus, 128 kbit/s),
// start(1000). The adaptive restart is stop() then start(2000) at once, as the extension does;
// the blob that stop() flushes arrives while `restarting` is set and is kept but marked
// `dropped` (the extension's ondataavailable returns early for it, so it is never sent).
'use strict';

const MIME_TYPE = 'audio/webm;codecs=opus';

function blobToBase64(blob) {
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

async function isweepRecord(options) {
  const {audioUrl, restartAfterSeconds = null} = options;
  const report = {userAgent: navigator.userAgent, blobs: [], errors: [], restartAt: null};
  const ctx = new AudioContext({sampleRate: 48000});
  await ctx.resume();
  report.sampleRate = ctx.sampleRate;
  const buffer = await ctx.decodeAudioData(await (await fetch(audioUrl)).arrayBuffer());
  report.audioSeconds = buffer.duration;
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  const destination = ctx.createMediaStreamDestination();
  source.connect(destination);
  // A tab's stream never stops flowing; a silent constant source keeps this one flowing too.
  const keepAlive = ctx.createConstantSource();
  keepAlive.offset.value = 0;
  keepAlive.connect(destination);
  const recorder = new MediaRecorder(destination.stream,
    {mimeType: MIME_TYPE, audioBitsPerSecond: 128000});
  report.recorderMimeType = recorder.mimeType;
  let restarting = false;
  let stream = 0;
  const pending = [];
  const t0 = performance.now();
  const now = () => (performance.now() - t0) / 1000;
  recorder.ondataavailable = (event) => {
    const entry = {at: now(), size: event.data.size, dropped: restarting, stream};
    report.blobs.push(entry);
    pending.push(blobToBase64(event.data).then((b64) => { entry.b64 = b64; }));
  };
  recorder.onerror = (event) => report.errors.push(`recorder: ${event.error || event}`);
  const ended = new Promise((resolve) => { source.onended = resolve; });
  keepAlive.start();
  source.start();
  report.sourceStartContextTime = ctx.currentTime;
  recorder.start(1000);
  report.startedAt = now();
  if (restartAfterSeconds !== null) {
    await sleep(restartAfterSeconds * 1000 - (performance.now() - t0));
    report.restartAt = now();
    restarting = true;
    // The flushed blob's dataavailable comes before the stop event; the new stream's first
    // blob comes a whole interval later, so clearing the flag on stop is exact.
    recorder.addEventListener('stop', () => { restarting = false; stream = 1; }, {once: true});
    recorder.stop();
    recorder.start(2000);
  }
  await ended;
  report.playbackEndedAt = now();
  const done = new Promise((resolve) => {
    recorder.addEventListener('stop', resolve, {once: true});
  });
  recorder.stop();
  await done;
  report.stoppedAt = now();
  await Promise.all(pending);
  keepAlive.stop();
  destination.stream.getTracks().forEach((track) => track.stop());
  await ctx.close();
  return report;
}

window.isweepRecord = isweepRecord;
window.isweepReady = true;
