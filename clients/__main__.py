"""python -m clients query "TEXT" [-k 5] [--url 127.0.0.1:8001] — top-k documents over gRPC."""
from __future__ import annotations

import argparse
import sys
import textwrap

from tritonclient.utils import InferenceServerException

from .retrieval import DEFAULT_URL, RetrievalClient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients")
    sub = parser.add_subparsers(dest="command", required=True)
    query = sub.add_parser("query", help="retrieve the top-k documents for one or more texts")
    query.add_argument("text", nargs="+", help="query text(s); several are sent as one batched request")
    query.add_argument("-k", type=int, default=5, help="documents per query (default: 5)")
    query.add_argument("--url", default=DEFAULT_URL, help=f"gRPC address of the server (default: {DEFAULT_URL})")
    query.add_argument("--timeout", type=float, default=30.0, help="seconds before the request is abandoned")
    query.add_argument("--tls-root-cert", default=None, help="PEM root certificate: talk to a TLS server")
    args = parser.parse_args(argv)

    try:
        with RetrievalClient(args.url, args.timeout, args.tls_root_cert) as client:
            result = client.retrieve(args.text, args.k)
    except InferenceServerException as e:
        print(f"error: {e.status() or ''} {e.message()}", file=sys.stderr)
        return 1
    for text, hits in zip(args.text, result.hits):
        print(f"query: {text}")
        for rank, hit in enumerate(hits, 1):
            print(f"{rank:>3}. [{hit.score:.4f}] {hit.title}  (doc {hit.doc_id}: {hit.key})")
            print(textwrap.indent(textwrap.fill(hit.snippet, 96), "       "))
    print(f"index {result.index_version}; round trip {result.latency_ms:.1f} ms over gRPC ({args.url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
