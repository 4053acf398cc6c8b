"""From a session's blobs to 16 kHz mono float32 PCM: the streaming WebM and Ogg demuxers, the
per-blob work budget, and the decoder that turns their packets into gapless audio (PyAV)."""
