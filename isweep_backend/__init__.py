"""isweep-backend: real-time speech-to-text for the ISweep browser extension."""

__version__ = "0.1.0"
