"""modelpool: a model-serving cluster on Ray Serve."""
from cluster.version import __version__

__all__ = ["__version__"]
