"""The plain baselines: an embedder behind a minimal HTTP server, one request at a time.

python -m benchmarks.peers.st_server --model PATH [--engine st|fastembed] [--threads N] [--index DIR] [--port 7998]
(binds 127.0.0.1). POST /embed {"texts": [...]} -> {"embeddings": [[...], ...]};
GET /health -> 200 once loaded, with the engine and its thread counts.
With --index (an index folder: shard-*.npy, docs.jsonl, manifest.json), also faiss-cpu IndexFlatIP over
the same vectors, answering what our ``retrieve`` answers (ids, scores, and each document's key, title and
snippet, cut by the same function, and the index version): POST /retrieve {"texts": [...], "k": int} ->
{"ids": [[...]], "scores": [[...]], "keys": [[...]], "titles": [[...]], "snippets": [[...]], "index_version": str}.

Engines: ``st`` is sentence-transformers (PyTorch); ``fastembed`` is Qdrant's fastembed (ONNX
Runtime), the embedder CPU users pick; it runs from its own venv (its pins differ from ours)
on a folder holding the same weights as ONNX (``benchmarks/compare.py`` assembles it).
Imports nothing of this repository but the snippet function (``model_repository.runtime.index``, numpy and
the standard library), so any venv's python with numpy can run it.
"""
from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.st_server")
    parser.add_argument("--model", required=True, help="sentence-transformers model folder")
    parser.add_argument("--index", default="", help="index folder with shard-*.npy to serve /retrieve with faiss")
    parser.add_argument("--engine", choices=("st", "fastembed"), default="st")
    parser.add_argument("--threads", type=int, default=0, help="compute threads of the engine and faiss (0: one per core it may use)")
    parser.add_argument("--port", type=int, default=7998)
    parser.add_argument("--snippet-chars", type=int, default=240, help="length of the snippet returned per document (ours' default)")
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
        from model_repository.runtime.index import snippet

        with open(f"{args.index}/docs.jsonl", encoding="utf-8") as f:
            docs = [json.loads(line) for line in f]
        with open(f"{args.index}/manifest.json", encoding="utf-8") as f:
            version = json.load(f)["index_version"]
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
                found = [[docs[i] for i in row] for row in ids.tolist()]
                self._send(200, {"ids": ids.tolist(), "scores": scores.tolist(), "keys": [[d["key"] for d in row] for row in found],
                                 "titles": [[d["title"] for d in row] for row in found],
                                 "snippets": [[snippet(d["text"], args.snippet_chars) for d in row] for row in found],
                                 "index_version": version})
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
