"""Cellpose's published models by name: the catalog of names and files, the cache of converted
models, the downloader and the fetch that ties them together.

``fetch_model("cyto3")`` returns the cached manifest of Cellpose's cyto3 converted to ONNX,
downloading and converting it the first time. Nothing here imports torch.
"""
from .cache import CELLPOSE_MODELS_ENV, MODELS_DIR_ENV, cache_dir, cellpose_cache_dir
from .catalog import (CATALOG, PublishedModel, UnknownModelError, UnsupportedModelError, lookup,
                      published_names)
from .download import MODELS_URL_ENV, ChecksumError, DownloadError
from .fetch import fetch_model, is_cached, remove_model

__all__ = ["CATALOG", "CELLPOSE_MODELS_ENV", "MODELS_DIR_ENV", "MODELS_URL_ENV", "ChecksumError", "DownloadError",
           "PublishedModel", "UnknownModelError", "UnsupportedModelError", "cache_dir", "cellpose_cache_dir",
           "fetch_model", "is_cached", "lookup", "published_names", "remove_model"]
