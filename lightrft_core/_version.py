"""The version of every first-party LightRFT package (they are released in lockstep)."""

__version__ = "0.1.0"
