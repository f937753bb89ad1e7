"""The model manifest (``NAME.json``) and the same facts in the ONNX file's ``metadata_props``.

The runtime (:mod:`cellflow_rt.registry`) reads the manifest; its keys are fixed by the format
``cellflow-rt-model/1``. A Cellpose 4 (Cellpose-SAM) manifest says so with ``cellpose_generation``
4 and ``architecture`` "cpsam", and describes its network in ``cpsam`` instead of ``nbase`` (it has
no default channels and no size model). The ONNX metadata repeats the facts that do not depend on
the file's own bytes, so that an ONNX file separated from its manifest still says what it is.
"""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

from cellflow_rt.registry import MANIFEST_FORMAT

METADATA_PREFIX = "cellflow_rt."
# Facts about the file itself (its hash, its measured errors) cannot live inside it.
_NOT_IN_METADATA = ("onnx_file", "onnx_sha256", "parity", "fp16")


def _source_facts(name, description, source_file, source_sha256, exporter_version, opset) -> dict:
    """The manifest's first entries, the same for every model: format, name, files and their source."""
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "description": description,
        "onnx_file": f"{name}.onnx",
        "onnx_sha256": None,
        "source_file": source_file,
        "source_sha256": source_sha256,
        "exporter_version": exporter_version,
        "opset": int(opset),
    }


def model_facts(
    *,
    name: str,
    description: str,
    source_file: str,
    source_sha256: str,
    exporter_version: str,
    opset: int,
    spec,
    diam_mean: float,
    diam_labels: float,
    builtin_name,
    default_channels,
    size_model,
    restore_type=None,
) -> dict:
    """Return the manifest entries that describe the model, in the manifest's key order.

    ``restore_type`` (denoise, deblur, upsample, oneclick) makes it a restoration model (``kind``).
    """
    return {
        **_source_facts(name, description, source_file, source_sha256, exporter_version, opset),
        "nchan": int(spec.nchan),
        "nout": int(spec.nout),
        "nbase": [int(n) for n in spec.nbase],
        "diam_mean": float(diam_mean),
        "diam_labels": float(diam_labels),
        "builtin_name": builtin_name,
        "kind": "segmentation" if restore_type is None else "restoration",
        "restore_type": restore_type,
        "default_channels": [int(c) for c in default_channels],
        "size_model": size_model,
        "parity": None,
        "fp16": None,
    }


def cellpose4_model_facts(
    *,
    architecture: str,
    name: str,
    description: str,
    source_file: str,
    source_sha256: str,
    exporter_version: str,
    opset: int,
    spec,
    diam_mean: float,
    diam_labels: float,
) -> dict:
    """Return the manifest entries of a Cellpose 4 ViT model, in the manifest's key order.

    ``architecture`` is ``"cpsam"`` (Cellpose-SAM) or ``"cpdino"`` (Cellpose 4.2's DINOv3 CPDINO); the
    key of that name holds the spec (CPDINO's: ``backbone`` ``vitl``, ``vitb`` or ``custom``; ``tile``
    the default side, 384; ``tile_multiple`` 8: its graph's tile side is not fixed). ``diam_mean`` and
    ``diam_labels`` are the checkpoint's stored values, for information: Cellpose 4 resizes by
    ``30 / diameter`` and never reads them.
    """
    return {
        **_source_facts(name, description, source_file, source_sha256, exporter_version, opset),
        "cellpose_generation": 4,
        "architecture": architecture,
        "nchan": int(spec.nchan),
        "nout": int(spec.nout),
        architecture: spec.as_json(),
        "diam_mean": float(diam_mean),
        "diam_labels": float(diam_labels),
        "builtin_name": None,
        "size_model": None,
        "parity": None,
        "fp16": None,
    }


#: The manifest entries of a Cellpose-SAM / a CPDINO model (:func:`cellpose4_model_facts`).
cpsam_model_facts = partial(cellpose4_model_facts, architecture="cpsam")
cpdino_model_facts = partial(cellpose4_model_facts, architecture="cpdino")


def onnx_metadata_entries(facts: dict, precision: str = "fp32") -> dict:
    """The ``cellflow_rt.*`` metadata keys and JSON values for a model file."""
    entries = {k: v for k, v in facts.items() if k not in _NOT_IN_METADATA}
    entries["precision"] = precision
    return {METADATA_PREFIX + key: json.dumps(value) for key, value in entries.items()}


def set_onnx_metadata(model, facts: dict, precision: str = "fp32") -> None:
    """Write ``facts`` (JSON-encoded, keys prefixed ``cellflow_rt.``) into ``model.metadata_props``."""
    model.producer_name = "cellflow-rt export"
    model.producer_version = str(facts["exporter_version"])
    model.doc_string = facts["description"]
    del model.metadata_props[:]
    for key, value in onnx_metadata_entries(facts, precision).items():
        prop = model.metadata_props.add()
        prop.key = key
        prop.value = value


def append_onnx_metadata(path, facts: dict, precision: str = "fp32") -> None:
    """Add the metadata of :func:`set_onnx_metadata` to an ONNX file without loading its graph.

    Protocol buffers parse concatenated messages as one message merged from both (repeated fields
    appended, single fields taken from the last), so appending a ModelProto that holds only the
    metadata, producer and doc string gives the file those entries; a 1.2 GB network is neither
    read nor rewritten. The file must not have metadata of its own (torch's exporter writes none).
    """
    import onnx

    extra = onnx.ModelProto()
    extra.producer_name = "cellflow-rt export"
    extra.producer_version = str(facts["exporter_version"])
    extra.doc_string = facts["description"]
    for key, value in onnx_metadata_entries(facts, precision).items():
        prop = extra.metadata_props.add()
        prop.key = key
        prop.value = value
    with open(path, "ab") as f:
        f.write(extra.SerializeToString())


def read_onnx_metadata(model) -> dict:
    """Return the ``cellflow_rt.*`` metadata of an ONNX model as a dict of decoded values."""
    return {
        p.key[len(METADATA_PREFIX) :]: json.loads(p.value)
        for p in model.metadata_props
        if p.key.startswith(METADATA_PREFIX)
    }


def write_bytes_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a reader never sees half a file."""
    path = Path(path)
    # open() rather than mkstemp, whose 0600 mode would make a shared model folder unreadable
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_manifest(path, manifest: dict) -> None:
    """Write the manifest as indented JSON (floats with ``repr``: full float64 precision)."""
    missing = [k for k, v in manifest.items() if v is None and k in ("onnx_sha256", "parity")]
    if missing:
        raise ValueError(f"manifest: {missing} must be filled in before writing")
    write_bytes_atomic(path, (json.dumps(manifest, indent=1, allow_nan=False) + "\n").encode("utf-8"))
