"""Prometheus metrics for `flowers serve`, named after TF Serving's where one exists.

TF Serving exports `:tensorflow:serving:request_count` and `:tensorflow:serving:request_latency`
(microseconds); prometheus-client adds `_total` to counters. Requests naming a model
the server does not have are counted under model_name="" to keep label cardinality bounded.
"""
import prometheus_client as prom

DEFAULT_PATH = "/monitoring/prometheus/metrics"
# TF Serving's request latency buckets: exponential from 10us, factor 1.8, 33 buckets.
LATENCY_BUCKETS_US = tuple(10 * 1.8 ** i for i in range(33))


class Metrics:
    def __init__(self, model_names):
        self.model_names = model_names  # callable -> the currently configured model names
        self.registry = prom.CollectorRegistry()
        prom.ProcessCollector(registry=self.registry)
        prom.PlatformCollector(registry=self.registry)
        self.requests = prom.Counter(
            ":tensorflow:serving:request_count", "Requests by model, API, entrypoint and status code.",
            ["model_name", "API", "entrypoint", "status"], registry=self.registry)
        self.latency = prom.Histogram(
            ":tensorflow:serving:request_latency", "Request wall time in microseconds.",
            ["model_name", "API", "entrypoint"], buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.errors = prom.Counter(
            "flowers_serving_request_errors", "Failed requests by model, API, entrypoint and status code.",
            ["model_name", "API", "entrypoint", "status"], registry=self.registry)
        self.batch_size = prom.Histogram(
            "flowers_serving_batch_size", "Requests' rows per model call when batching is enabled.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=self.registry)

    def observe(self, model_name, api, entrypoint, status, seconds):
        model_name = model_name if model_name in self.model_names() else ""
        self.requests.labels(model_name, api, entrypoint, status).inc()
        self.latency.labels(model_name, api, entrypoint).observe(seconds * 1e6)
        if status != "OK":
            self.errors.labels(model_name, api, entrypoint, status).inc()

    def observe_batch(self, rows):
        self.batch_size.observe(rows)

    def page(self):
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST
