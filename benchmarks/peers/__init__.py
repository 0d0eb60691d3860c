"""The peers compare serves beside ours: the sentence-transformers / fastembed shim (+ faiss-cpu)."""
