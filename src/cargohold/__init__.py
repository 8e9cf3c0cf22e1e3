"""cargohold: persistent data for containerized machine learning.

Kept free of imports on purpose: ``cargohold.checkpoint`` is imported inside training images that
have only the standard library, and importing it imports this file first.
"""

__version__ = "0.2.0"

__all__ = ["__version__"]
