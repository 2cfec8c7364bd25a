"""`flowers console`: the web console over TF Serving (app.py)."""
