"""Darkroom: computer-vision work over photos as they arrive and over whole archives."""

__version__ = "0.1.0"
