"""Where a model's int8 network lives and whether it still belongs to the model (``precision="int8"``).

``cellflow-rt quantize`` (the export extra: NNCF) writes, beside ``NAME.onnx``, the network with its
linear layers quantised to int8 as OpenVINO IR (``NAME.int8.xml`` / ``.bin``) and what it was made
from (``NAME.int8.json``: the ONNX file's sha256, the calibration images and tiles, the versions).
The runtime only reads those files with OpenVINO: no NNCF, no torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

#: Version of the quantisation recipe (export/quantize.py); a model quantised by another is refused.
RECIPE_VERSION = 1


class Int8ModelError(ValueError):
    """``precision="int8"`` for a model without a usable int8 network."""


def int8_files(onnx_path: Union[str, Path]) -> tuple[Path, Path]:
    """(IR ``.xml``, facts ``.json``) of the int8 network of ``onnx_path`` (``NAME.int8.*`` beside it)."""
    onnx_path = Path(onnx_path)
    stem = onnx_path.with_suffix("")
    return stem.with_name(stem.name + ".int8.xml"), stem.with_name(stem.name + ".int8.json")


def quantize_hint(onnx_path: Path) -> str:
    return (f"make it with: cellflow-rt quantize {onnx_path} --images FOLDER "
            "(images like the ones you segment; needs pip install 'cellflow-rt[export]')")


def find_int8_model(onnx_path: Union[str, Path], onnx_sha256: str) -> tuple[Path, dict]:
    """The int8 IR of ``onnx_path`` and its facts, checked against the ONNX file's ``onnx_sha256``.

    Raises
    ------
    Int8ModelError
        No int8 network, unreadable facts, another recipe, or one made from another ONNX file
        (the model was exported again since it was quantised).
    """
    onnx_path = Path(onnx_path)
    xml, facts_path = int8_files(onnx_path)
    if not xml.is_file() or not xml.with_suffix(".bin").is_file() or not facts_path.is_file():
        raise Int8ModelError(f"{onnx_path.name} has no int8 network ({xml.name}); {quantize_hint(onnx_path)}")
    try:
        facts = json.loads(facts_path.read_text())
    except (OSError, ValueError) as exc:
        raise Int8ModelError(f"{facts_path}: unreadable ({exc}); {quantize_hint(onnx_path)}") from None
    if facts.get("recipe_version") != RECIPE_VERSION:
        raise Int8ModelError(f"{xml.name} was made by another version of cellflow-rt's quantisation "
                             f"({facts.get('recipe_version')}, this one reads {RECIPE_VERSION}); {quantize_hint(onnx_path)}")
    if facts.get("onnx_sha256") != onnx_sha256:
        raise Int8ModelError(f"{xml.name} was quantised from another version of {onnx_path.name} "
                             f"(sha256 {str(facts.get('onnx_sha256'))[:12]}..., the file now: {onnx_sha256[:12]}...); "
                             f"{quantize_hint(onnx_path)}")
    return xml, facts
