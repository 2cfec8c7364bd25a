"""Stage 4: versions in TF Serving's base path and labels in models.config (publish.py,
versions.py, stores.py), and the deploy gate (gate.py)."""
