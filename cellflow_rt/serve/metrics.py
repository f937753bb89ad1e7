"""Prometheus metrics of the service (``GET /metrics``), in a registry of its own.

=========================================  =========  ==============================================
metric                                     type       labels
=========================================  =========  ==============================================
``cellflow_requests_total``                counter    ``endpoint``, ``status`` (HTTP status code)
``cellflow_request_seconds``               histogram  ``endpoint``: arrival to answer
``cellflow_stage_seconds``                 histogram  ``stage``: decode, queue, preprocess, network,
                                                      dynamics, encode (segmentations answered 200)
``cellflow_errors_total``                  counter    ``reason``: bad_option, bad_image, too_large,
                                                      unsupported_type, not_acceptable, unauthorized,
                                                      busy, timeout, disconnected, not_found, internal,
                                                      slow_headers (connection closed: headers too slow)
``cellflow_queue_depth``                   gauge      requests waiting for a worker
``cellflow_workers_busy``                  gauge      worker threads running a segmentation
``cellflow_requests_admitted``             gauge      requests admitted and not yet answered
``cellflow_model_info``                    gauge      ``model``, ``provider``, ``precision`` (value 1)
=========================================  =========  ==============================================
"""
from __future__ import annotations

from typing import Dict

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The service's metrics; ``service`` supplies the live queue figures."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service):
        disable_created_metrics()  # the *_created series only add noise to a scrape
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("cellflow_requests_total", "HTTP requests answered", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("cellflow_request_seconds", "Seconds from a request's arrival to its answer",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.stages = Histogram("cellflow_stage_seconds", "Seconds per stage of answered segmentations",
                                ["stage"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("cellflow_errors_total", "Requests not answered 200, by reason", ["reason"],
                              registry=self.registry)
        Gauge("cellflow_queue_depth", "Requests waiting for a worker",
              registry=self.registry).set_function(lambda: service.waiting)
        Gauge("cellflow_workers_busy", "Worker threads running a segmentation",
              registry=self.registry).set_function(lambda: service.busy)
        Gauge("cellflow_requests_admitted", "Requests admitted and not yet answered",
              registry=self.registry).set_function(lambda: service.admitted)
        info = Gauge("cellflow_model_info", "Models served", ["model", "provider", "precision"],
                     registry=self.registry)
        for name, model in service.models.items():
            info.labels(name, model.net.providers[0], model.net.precision).set(1)

    def observe(self, endpoint: str, status: int, seconds: float, reason: str = "") -> None:
        """Count one answered request."""
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if reason:
            self.errors.labels(reason).inc()

    def observe_stages(self, timings: Dict[str, float]) -> None:
        """Record the stage times of one segmentation."""
        for stage, seconds in timings.items():
            self.stages.labels(stage).observe(seconds)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
