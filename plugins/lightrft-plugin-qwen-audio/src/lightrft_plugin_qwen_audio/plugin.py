"""The ``lightrft`` entry point of this package. Importing it must stay cheap: no torch."""

from __future__ import annotations
