"""vitbook: the Vision Transformer rebuilt from scratch, the package behind the book."""

__version__ = "0.1.0"
