"""The built-in demo: a verifiable arithmetic task learned by a tiny model on CPU."""
