"""Query parameters of ``POST /segment`` -> model name + :class:`~cellflow_rt.settings.EvalSettings`.

Options are read generically from the dataclass: every field of ``EvalSettings`` is a query parameter
of the same name (Cellpose's), parsed by its type annotation (bool, int, float, optional values,
comma-separated tuples, JSON objects for dict-valued or dataclass-valued options), so an option added
to ``EvalSettings`` is served without a change here. A few names are the command line's rather than
the dataclass's (``model``, ``chan``, ``chan2``, ``all_channels``), and ``diameter`` keeps
``cellflow-rt run``'s meaning (default 30; 0 = estimate with the model's size model): the values
become settings through the adapter ``run`` uses (:func:`cellflow_rt.eval_options.settings_from_flags`,
with the served model's family rules), so that a request gives the masks ``cellflow-rt run`` gives
for the same flags, and is refused with the same message.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import json
import math
import re
import typing
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..eval_options import OptionError, flag_default, settings_from_flags
from ..family import family_of
from ..settings import EvalSettings

#: ``EvalSettings`` fields that are not query parameters, with what to use instead.
NOT_OFFERED = {
    "channels": "use chan and chan2 (or all_channels=true)",
    "bsize": "each model runs at its own tile side",
    "compute_masks": "the service always computes masks",
}

#: Defaults that differ from ``EvalSettings``'s: the command line's (Cellpose's CLI default diameter).
CLI_DEFAULTS = {"diameter": flag_default("diameter")}

#: Parameters that are not ``EvalSettings`` fields: name -> (OpenAPI schema, default, description).
SERVICE_PARAMETERS = {
    "model": ({"type": "string"}, None, "Name of a model this server serves (GET /models); default: the first."),
    "chan": ({"type": "integer", "minimum": 0}, 0, "Channel to segment: 0 = grayscale, 1/2/3 = R/G/B."),
    "chan2": ({"type": "integer", "minimum": 0}, 0, "Nuclear channel: 0 = none, 1/2/3 = R/G/B."),
    "all_channels": ({"type": "boolean"}, False, "Use the image's first channels as they are (channels=None)."),
    "timeout": ({"type": "number", "exclusiveMinimum": 0}, None,
                "Seconds for this request (upload, queue and work); at most the server's --timeout."),
}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null"}


@dataclass(frozen=True)
class SegmentOptions:
    """What a ``POST /segment`` query asks for."""

    model: str
    settings: EvalSettings
    #: diameter=0 with a model that has a size model: estimate the diameter first (as ``run`` does)
    estimate_diameter: bool
    #: the client's own deadline in seconds (None: the server's)
    timeout: Optional[float] = None


# --------------------------------------------------------------------------------------------------
# parsing values by type annotation


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def _parse_json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"expected a JSON object, got {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {text!r}")
    return value


def _is_dict_type(hint) -> bool:
    return hint is dict or typing.get_origin(hint) in (dict, collections.abc.Mapping) or \
        (isinstance(hint, type) and issubclass(hint, collections.abc.Mapping))


def parser_for(hint) -> Callable[[str], Any]:
    """A function parsing one query value into a value of type ``hint``.

    Handles bool, int, float, str, ``Optional[...]`` ("none"/"null" -> None), ``Union`` of those
    (tried in order), fixed and variable tuples (comma-separated), dicts (a JSON object) and
    dataclasses (a JSON object of their fields).
    """
    if hint is bool:
        return _parse_bool
    if hint is int:
        return _parse_int
    if hint is float:
        return _parse_float
    if hint is str:
        return str
    if _is_dict_type(hint):
        return _parse_json_object
    if dataclasses.is_dataclass(hint):
        return lambda text: hint(**_parse_json_object(text))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        nullable = type(None) in args
        choices = [parser_for(a) for a in args if a is not type(None)]

        def parse_union(text: str):
            if nullable and text.strip().lower() in _NONE:
                return None
            problems = []
            for parse in choices:
                try:
                    return parse(text)
                except (ValueError, TypeError) as exc:
                    problems.append(str(exc))
            raise ValueError(" or ".join(dict.fromkeys(problems)) + (" (or none)" if nullable else ""))
        return parse_union
    if origin in (tuple, Tuple):
        variable = len(args) == 2 and args[1] is Ellipsis
        items = [parser_for(args[0])] if variable else [parser_for(a) for a in args]

        def parse_tuple(text: str):
            parts = [p for p in re.split(r"\s*,\s*", text.strip())] if text.strip() else []
            if not variable and len(parts) != len(items):
                raise ValueError(f"expected {len(items)} comma-separated values, got {text!r}")
            return tuple((items[0] if variable else items[i])(p) for i, p in enumerate(parts))
        return parse_tuple
    return json.loads  # anything else: a JSON value, checked by EvalSettings itself


def _schema_for(hint) -> dict:
    """OpenAPI schema of a query parameter of type ``hint`` (as :func:`parser_for` reads it)."""
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        schemas = [_schema_for(a) for a in args if a is not type(None)]
        schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
        if type(None) in args:
            schema = {"anyOf": [schema, {"type": "null"}]}
        return schema
    if origin in (tuple, Tuple):
        return {"type": "string", "description": "comma-separated values, e.g. 1,99"}
    return {"type": "string", "description": "a JSON object"}


# --------------------------------------------------------------------------------------------------
# the option table


def _field_docs() -> Dict[str, str]:
    """Each field's description from ``EvalSettings``'s numpydoc Attributes section."""
    docs: Dict[str, str] = {}
    names: List[str] = []
    section = (EvalSettings.__doc__ or "").partition("Attributes\n    ----------\n")[2]
    for line in section.splitlines():
        header = re.match(r"^    (\w+(?:, \w+)*) : ", line)
        if header:
            names = header.group(1).split(", ")
        elif line.startswith("        ") and names:
            for name in names:
                docs[name] = (docs.get(name, "") + " " + line.strip()).strip()
    return docs


@dataclass(frozen=True)
class Option:
    """One query parameter: its name, parser, default and OpenAPI description."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    schema: dict
    description: str


def setting_options() -> List[Option]:
    """The query parameters that map one to one onto ``EvalSettings`` fields."""
    hints = typing.get_type_hints(EvalSettings)
    docs = _field_docs()
    options = []
    for f in fields(EvalSettings):
        if f.name in NOT_OFFERED:
            continue
        default = CLI_DEFAULTS.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        options.append(Option(f.name, parser_for(hints[f.name]), default, _schema_for(hints[f.name]),
                              docs.get(f.name, "")))
    return options


def all_options() -> List[Option]:
    """Every query parameter of ``POST /segment`` (service parameters first)."""
    service = [Option(name, parser_for({"string": str, "integer": int, "number": float,
                                        "boolean": bool}[schema["type"]]),
                      default, schema, text)
               for name, (schema, default, text) in SERVICE_PARAMETERS.items()]
    return service + setting_options()


_OPTIONS = {o.name: o for o in all_options()}


def tile_side(model) -> str:
    """What ``bsize`` is for a served model, in words: the tile side comes from the model."""
    family = family_of(model)
    return f"{family.default_tile} pixels" + (", fixed" if family.tile_fixed else " by default")


def _unknown(name: str, model_name: str, model) -> OptionError:
    if name == "bsize":
        return OptionError(f"option 'bsize' is not offered over HTTP: {NOT_OFFERED[name]} "
                           f"({model_name}: {tile_side(model)})")
    if name in NOT_OFFERED:
        return OptionError(f"option {name!r} is not offered over HTTP: {NOT_OFFERED[name]}")
    close = difflib.get_close_matches(name, list(_OPTIONS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; options: {', '.join(_OPTIONS)}"
    return OptionError(f"unknown option {name!r}{hint}")


def parse_query(items: Sequence[Tuple[str, str]], served: Mapping[str, Any], default_model: str) -> SegmentOptions:
    """Query parameters -> :class:`SegmentOptions`.

    Parameters
    ----------
    items : sequence of (str, str)
        The query's (name, value) pairs, in order (repeated names are refused).
    served : mapping
        Model name -> loaded model (needs ``size_model``), the models this server serves.
    default_model : str
        The model used when the query names none.

    Raises
    ------
    OptionError
        Unknown or repeated option, a value of the wrong type, an unserved model, or settings that
        ``EvalSettings`` refuses; the message names the option.
    """
    asked = dict(items).get("model", default_model)
    model_name = asked if asked in served else default_model
    given: Dict[str, Any] = {}
    for name, text in items:
        if name not in _OPTIONS:
            raise _unknown(name, model_name, served.get(model_name))
        if name in given:
            raise OptionError(f"option {name!r} given more than once")
        try:
            given[name] = _OPTIONS[name].parse(text)
        except (ValueError, TypeError) as exc:
            raise OptionError(f"option {name}={text!r}: {exc}") from None
    timeout = given.pop("timeout", None)
    if timeout is not None and timeout <= 0:
        raise OptionError(f"option timeout must be > 0 seconds, got {timeout}")
    model = given.pop("model", default_model)
    if model not in served:
        raise OptionError(f"model {model!r} is not served here (models: {', '.join(served)})")
    chosen = settings_from_flags(given, family=family_of(served[model]))
    estimate = chosen.estimate_diameter and getattr(served[model], "size_model", None) is not None
    return SegmentOptions(model=model, settings=chosen.settings, estimate_diameter=estimate, timeout=timeout)


def openapi_parameters() -> List[dict]:
    """The query parameters of ``POST /segment`` as OpenAPI parameter objects."""
    params = []
    for o in all_options():
        schema = dict(o.schema)
        if o.default is not None:
            schema["default"] = ",".join(map(str, o.default)) if isinstance(o.default, tuple) else o.default
        params.append({"name": o.name, "in": "query", "required": False, "schema": schema,
                       "description": o.description})
    return params
