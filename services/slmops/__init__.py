"""slmops: operate small language models."""

__version__ = "0.1.0"
