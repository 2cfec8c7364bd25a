"""flowers: transfer-learning image classification as Kubeflow-on-GKE microservices."""

__version__ = "0.1.0"
