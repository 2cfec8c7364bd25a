"""Stage 3: the head on the embeddings (head.py, trainer.py), its figures (metrics.py) and the
servable SavedModel with the backbone and image function inside (export.py)."""
