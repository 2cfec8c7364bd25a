"""The Kubeflow pipeline's steps as lightweight components (components.py); `pipeline.py` at the
repository root wires them."""
