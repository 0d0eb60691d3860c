"""The plain baselines: an embedder behind a minimal HTTP server, one request at a time.

python -m benchmarks.st_server --model PATH [--engine st|fastembed] [--threads N] [--index DIR] [--port 7998]
(binds 127.0.0.1). POST /embed {"texts": [...]} -> {"embeddings": [[...], ...]};
GET /health -> 200 once loaded, with the engine and its thread counts.
With --index (an index folder: shard-*.npy), also faiss-cpu IndexFlatIP over the same vectors:
POST /retrieve {"texts": [...], "k": int} -> {"ids": [[...]], "scores": [[...]]}.

Engines: ``st`` is sentence-transformers (PyTorch); ``fastembed`` is Qdrant's fastembed (ONNX
Runtime), the embedder CPU users pick; it runs from its own venv (its pins differ from ours)
on a folder holding the same weights as ONNX (``benchmarks/compare.py`` assembles it).
Imports nothing of this repository, so any venv's python can run it.
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
    parser.add_argument("--engine", choices=("st", "fastembed"), default="st")
    parser.add_argument("--threads", type=int, default=0, help="compute threads of the engine and faiss (0: one per core it may use)")
    parser.add_argument("--port", type=int, default=7998)
    args = parser.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    health = {"engine": args.engine, "threads": threads}
    index = None
    if args.index:
        import glob

        import faiss
        import numpy as np

        faiss.omp_set_num_threads(threads)
        health["faiss_threads"] = faiss.omp_get_max_threads()
        vectors = np.concatenate([np.load(f) for f in sorted(glob.glob(f"{args.index}/shard-*.npy"))]).astype(np.float32)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encode = _engine(args.engine, args.model, threads, health)

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
            self._send(200, health) if self.path == "/health" else self._send(404, {})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            vectors = encode(body["texts"])
            if self.path == "/retrieve" and index is not None:
                scores, ids = index.search(vectors, int(body["k"]))
                self._send(200, {"ids": ids.tolist(), "scores": scores.tolist()})
            else:
                self._send(200, {"embeddings": vectors.tolist()})

    HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()  # single-threaded: one request at a time
    return 0


def _engine(name: str, model_path: str, threads: int, health: dict):
    """texts -> L2-normalised float32 embeddings [n, dim], from the chosen engine."""
    import numpy as np

    if name == "fastembed":
        from fastembed import TextEmbedding

        model = TextEmbedding("sentence-transformers/all-MiniLM-L6-v2", specific_model_path=model_path, threads=threads,
                              providers=["CPUExecutionProvider"])
        health["onnxruntime_intra_op_threads"] = threads

        def encode(texts):
            vectors = np.stack(list(model.embed(texts, batch_size=max(1, len(texts)))))
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

        return encode
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    health["torch_threads"] = torch.get_num_threads()
    model = SentenceTransformer(model_path, device="cpu")
    return lambda texts: model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


if __name__ == "__main__":
    raise SystemExit(main())
