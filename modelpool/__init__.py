"""modelpool: a model-serving cluster on Ray Serve."""
__version__ = "0.1.0"
