"""Model helpers: tiny models and tokenizers built locally (no hub access needed)."""
