"""Stage 5, `flowers serve`: a local, TF-Serving-compatible model server (REST and gRPC).

server.py (flags, start/stop), models.py (versions, labels, config reload), servable.py (one
loaded version), warmup.py, batching.py, inference.py (classify/regress/multi-inference), rest.py,
grpc_service.py, json_tensor.py, json_examples.py, errors.py, metrics.py, protos.py."""
