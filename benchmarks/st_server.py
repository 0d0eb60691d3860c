"""The plain baseline: sentence-transformers behind a minimal HTTP server, one request at a time.

python -m benchmarks.st_server --model PATH [--index DIR] [--port 7998]   (binds 127.0.0.1)
POST /embed {"texts": [...]} -> {"embeddings": [[...], ...]};  GET /health -> 200 once loaded.
With --index (an index folder: shard-*.npy), also faiss-cpu IndexFlatIP over the same vectors:
POST /retrieve {"texts": [...], "k": int} -> {"ids": [[...]], "scores": [[...]]}.
"""
from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.st_server")
    parser.add_argument("--model", required=True, help="sentence-transformers model folder")
    parser.add_argument("--index", default="", help="index folder with shard-*.npy to serve /retrieve with faiss")
    parser.add_argument("--port", type=int, default=7998)
    args = parser.parse_args(argv)
    index = None
    if args.index:
        import glob

        import faiss
        import numpy as np

        vectors = np.concatenate([np.load(f) for f in sorted(glob.glob(f"{args.index}/shard-*.npy"))]).astype(np.float32)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
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
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            vectors = model.encode(body["texts"], normalize_embeddings=True, convert_to_numpy=True)
            if self.path == "/retrieve" and index is not None:
                scores, ids = index.search(vectors, int(body["k"]))
                self._send(200, {"ids": ids.tolist(), "scores": scores.tolist()})
            else:
                self._send(200, {"embeddings": vectors.tolist()})

    HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()  # single-threaded: one request at a time
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
