"""Shared attention machinery for the kernel zoo: tiled (chunked) path, linear (feature-map) path, flex path."""
