"""bindspace: multimodal alignment in one shared embedding space."""

__version__ = "0.1.0"
