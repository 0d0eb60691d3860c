"""Locust gRPC load tests, capacity planner, kernel benchmarks (benchmarks issue; not built yet)."""
