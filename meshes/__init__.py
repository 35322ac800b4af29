"""Mesh library below the entry-point scripts: the caption vocabulary (captions.py), the headless renderer
(render.py) and the procedural toy furniture (toy_furniture.py)."""
