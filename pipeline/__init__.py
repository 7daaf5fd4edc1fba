"""Astronaut photography localization: the library behind ``python -m pipeline``."""

__version__ = "0.1.0"
