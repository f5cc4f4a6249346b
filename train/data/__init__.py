"""Datasets: the embedded Sprites renderer (`sprites`), its caption language (`captions`) and
loaders for real image folders such as CelebA (`folders`).

This package file holds only the attribute vocabulary shared by the renderer and the captions,
so that both can import it without importing each other.
"""
from __future__ import annotations

SHAPES = ["circle", "square", "triangle"]
COLORS = ["red", "green", "blue", "yellow", "purple"]

# The 13 binary attributes of a sprite, in the order of every attribute vector in the project.
# Exactly one shape_* and exactly one color_* is 1; the other five are independent fair coins.
ATTRIBUTES = (
    [f"shape_{s}" for s in SHAPES]
    + [f"color_{c}" for c in COLORS]
    + ["size_large", "pos_left", "pos_top", "bg_dark", "style_outline"]
)

# One-hot groups: a prediction or a caption that fixes one member fixes all of them.
GROUPS = {"shape": [f"shape_{s}" for s in SHAPES], "color": [f"color_{c}" for c in COLORS]}
