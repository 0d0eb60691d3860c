"""The plain baseline: sentence-transformers behind a minimal HTTP server, one request at a time.

python -m benchmarks.st_server --model PATH [--port 7998]   (binds 127.0.0.1)
POST /embed {"texts": [...]} -> {"embeddings": [[...], ...]};  GET /health -> 200 once loaded.
"""
from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.st_server")
    parser.add_argument("--model", required=True, help="sentence-transformers model folder")
    parser.add_argument("--port", type=int, default=7998)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model, device="cpu")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200 if self.path == "/health" else 404, {})

        def do_POST(self):
            texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["texts"]
            vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
            self._send(200, {"embeddings": vectors.tolist()})

    HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()  # single-threaded: one request at a time
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
