"""scaleclust: cluster web-scale image collections by meaning."""

__version__ = "0.1.0"
