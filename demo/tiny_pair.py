"""The tiny random pair for tests and development: it lives in the library (``ambient.tiny``)."""

from ambient.tiny import TINY_CHANNELS, images_or_blobs, make_tiny_pair

__all__ = ["TINY_CHANNELS", "images_or_blobs", "make_tiny_pair"]
