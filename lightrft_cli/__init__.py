"""The ``lightrft`` command line (typer)."""
