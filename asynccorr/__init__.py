"""asynccorr: stale-gradient correction for asynchronous model-based RL."""

__version__ = "0.1.0"
