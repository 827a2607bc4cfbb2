"""The version of this plugin; first-party packages are released in lockstep with the core."""

__version__ = "0.1.0"
