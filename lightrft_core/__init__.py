"""LightRFT core: interfaces, hook specifications, plugin registry, configuration, loop.

Importing this package is cheap (no torch); plugins write::

    from lightrft_core import hookimpl

    @hookimpl
    def lightrft_register_algorithms(register):
        from .my_algorithm import MyAlgorithm
        register(MyAlgorithm)
"""

from ._version import __version__
from .hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]
