"""modelpool's version, in the lowest layer so that every layer can name it (pyproject.toml reads it from here)."""
__version__ = "0.1.0"
