"""`flowers serve`: a local, TF-Serving-compatible model server (REST and gRPC).

server.py (flags, start/stop, subprocess helper), models.py (versions, labels, config
reload), batching.py, rest.py, grpc_service.py, json_tensor.py, metrics.py, protos.py.
"""
