"""The soak and overload benchmark (`python -m bench.soak`; `__main__` says what it does).

One module per step: `capture` (the audio every session sends and its reference text),
`runner` (sends at real-time pace, retries refused sessions, samples the server), `metrics`
(each attempt's figures, minute windows, /metrics deltas and CPU cores between samples) and
`report` (one small function per section it prints); `__main__` reads the flags and runs the
four in that order.
"""
