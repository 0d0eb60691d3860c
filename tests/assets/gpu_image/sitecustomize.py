"""This machine's environment made to look like the GPU image, for tests and the rehearsal of
deploy/gpu_kit.py (put this folder on PYTHONPATH and name the image's site-packages in SN_IMAGE_SITE).

The packages the kit carries are not found in SN_IMAGE_SITE, whichever interpreter asks: the image's
python3 then lacks them, and the kit's venv finds them only in the kit it unpacked.
"""
import importlib.machinery
import os
import sys

KIT_CARRIES = {"tritonclient", "locust", "gevent", "geventhttpclient", "hdrh", "pytriton", "rapidjson", "zmq", "flask",
               "faiss", "fastembed"}
IMAGE_SITE = os.environ.get("SN_IMAGE_SITE", "")


class NotInImage:
    def find_spec(self, name, path=None, target=None):
        if not IMAGE_SITE or "." in name or name not in KIT_CARRIES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        places = [spec.origin or ""] + list(spec.submodule_search_locations or []) if spec else []
        if spec is not None and all(str(p).startswith(IMAGE_SITE) for p in places if p):
            raise ModuleNotFoundError(f"No module named {name!r} (the GPU image lacks it)", name=name)
        return spec


sys.meta_path.insert(0, NotInImage())
