"""The load test's options, defined once.

``python -m benchmarks`` parses them, then forwards the same values to the Locust
process it starts (``locust_arguments``); the locustfile adds the same definitions to
Locust's own parser. Free of Locust imports (Locust monkey-patches the interpreter
with gevent on import).
"""
from __future__ import annotations

import argparse

TARGETS = ("triton", "infinity", "st")

# (flag, argparse keyword arguments); each is forwarded to Locust as ``flag value``.
LOAD_OPTIONS: tuple[tuple[str, dict], ...] = (
    ("--grpc-url", dict(default="127.0.0.1:8001", help="gRPC address of our server (loopback only)")),
    ("--target", dict(choices=TARGETS, default="triton",
                      help="triton: our server over gRPC; infinity (embed) / st (embed, retrieve with faiss): a peer over HTTP at --http-url")),
    ("--http-url", dict(default="", help="peer base URL, e.g. http://127.0.0.1:7997 (loopback only)")),
    ("--peer-model", dict(default="", help="model name the peer expects in its request (infinity)")),
    ("--metrics-url", dict(default="", help="Triton metrics URL (default: same host as --grpc-url, port 8002)")),
    ("--model", dict(choices=("embed", "retrieve"), default="retrieve", help="ensemble to load")),
    ("--queries", dict(default="artifacts/corpus/python-docs/queries.jsonl", help="JSONL with a 'query' per line")),
    ("--batch-size", dict(type=int, default=1, help="texts per request")),
    ("--k", dict(type=int, default=10, help="documents per query (retrieve)")),
    ("--load-mode", dict(choices=("closed", "open"), default="closed",
                         help="closed: steps are user counts, no wait; open: steps are target requests/s")),
    ("--steps", dict(default="1,2,4", help="comma-separated users (closed) or requests/s (open)")),
    ("--step-time", dict(type=float, default=10.0, help="seconds per step")),
    ("--arrivals", dict(choices=("poisson", "uniform"), default="poisson",
                        help="open loop: exponential gaps, or a fixed interval with a random phase per user")),
    ("--warmup", dict(type=float, default=2.0, help="seconds at the first step's load before measuring (discarded)")),
    ("--users-per-rps", dict(type=float, default=0.5,
                             help="open loop: users per target request/s (at least 1); enough that one slow call does not hold back arrivals")),
    ("--grpc-timeout", dict(type=float, default=10.0, help="deadline of one call, seconds")),
    ("--bad-request-every", dict(type=int, default=0, help="send an empty text every N-th request (tests the failure path)")),
)


def dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_load_options(parser) -> None:
    """Add every load option to an argparse parser or group (Locust's parser is one too)."""
    for flag, kwargs in LOAD_OPTIONS:
        parser.add_argument(flag, **kwargs)


def locust_arguments(args: argparse.Namespace) -> list[str]:
    """The parsed values as Locust command-line arguments."""
    out = []
    for flag, _ in LOAD_OPTIONS:
        out += [flag, str(getattr(args, dest(flag)))]
    return out
