"""Locust gRPC load tests, capacity planner, kernel benchmarks (``python -m benchmarks``)."""
