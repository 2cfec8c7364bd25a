"""Stage 6: prediction clients for TF Serving, REST and gRPC (client.py), the `flowers predict`
command (cli.py) and Beam batch prediction (batch.py)."""
