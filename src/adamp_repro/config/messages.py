"""Schema errors as one line each: the dotted key, its value as written on the command line, what is allowed.

pydantic reports where validation failed (``loc``: field names, union tags, list indices); this module follows
that location through the schema's models to the config key and the field's own description of its range.
"""

from __future__ import annotations

import difflib
import math
import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from adamp_repro.errors import ConfigError


def check_finite(value: Any, path: str = "") -> None:
    """Open subtrees are not typed, but a NaN or infinite number is never a meaningful setting."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}={show(value)}: expected a finite number")
    if isinstance(value, Mapping):
        for key, inner in value.items():
            check_finite(inner, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            check_finite(inner, f"{path}[{i}]")


def show(value: Any) -> str:
    """A value as the user would write it on the command line (strings quoted, to tell 'true' from true)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    out = repr(value)
    return out if len(out) <= 60 else out[:57] + "..."


def describe(error: Mapping[str, Any], data: Mapping[str, Any], root: type[BaseModel]) -> str:
    """One line for the first pydantic error of ``data`` against the schema model ``root``."""
    keys, value, field, holder = _locate(error["loc"], data, root)
    path = ".".join(keys)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{path}={show(error['input'])}: unknown key{suggest(keys[-1], _fields(holder), keys[:-1])}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = error["ctx"]["discriminator"].strip("'")
        got = value.get(tag) if isinstance(value, Mapping) else None
        spellings = _tag_spellings(field, tag) if field is not None else None
        if spellings is None:
            return f"{path}.{tag}={show(got)}: expected one of [{error['ctx'].get('expected_tags', '')}]"
        current, old = spellings
        still = f" (old spellings, still read: {', '.join(map(repr, old))})" if old else ""
        return f"{path}.{tag}={show(got)}: expected one of {current}{still}"
    expected = _expected(field) if field is not None else error["msg"]
    if kind == "missing":
        return f"{path}: missing; expected {expected}"
    return f"{path}={show(value)}: expected {expected}"


def suggest(key: str, valid: Mapping[str, Any] | list[str], parents: list[str]) -> str:
    """``; did you mean a.b?`` with the nearest valid name (difflib), or the list of valid names."""
    names = sorted(valid)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {'.'.join([*parents, close[0]])}?"
    return f"; valid keys: {', '.join(names)}"


def _locate(
    loc: tuple, data: Mapping[str, Any], root: type[BaseModel]
) -> tuple[list[str], Any, FieldInfo | None, Any]:
    """Follow an error's location through the schema: the config keys, the value there, its field and the
    model holding it. Parts of ``loc`` that are not config keys (union tags, list indices) are skipped."""
    keys: list[str] = []
    value: Any = data
    field: FieldInfo | None = None
    holder: Any = root
    current: list[type[BaseModel]] = [root]
    for part in loc:
        if not isinstance(part, str):
            break
        model = next((m for m in current if part in _fields(m)), None)
        if model is None:
            tagged = [m for m in current if part in _tags(m)]
            if tagged:
                current = tagged
                continue
            keys.append(part)  # a key the schema does not name
            field, holder = None, current[0]
            break
        field, holder = _fields(model)[part], model
        keys.append(part)
        value = value.get(part) if isinstance(value, Mapping) else None
        current = _models_in(field.annotation)
        if not current:
            break
    return keys, value, field, holder


def _fields(model: Any) -> dict[str, FieldInfo]:
    return {info.alias or name: info for name, info in model.model_fields.items()}


def _tags(model: type[BaseModel]) -> set[Any]:
    """The union tags that select ``model``: its Literal fields' values, or its ``schema_tag`` where a
    callable discriminator picks it."""
    tags: set[Any] = {model.schema_tag} if isinstance(getattr(model, "schema_tag", None), str) else set()
    for info in model.model_fields.values():
        if get_origin(info.annotation) is Literal:
            tags |= set(get_args(info.annotation))
    return tags


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    annotation = _bare(annotation)
    members = [_bare(m) for m in get_args(annotation)] if _is_union(annotation) else [annotation]
    return [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]


def _tag_spellings(field: FieldInfo, tag: str) -> tuple[list[Any], list[Any]] | None:
    """The current and the old spellings of the tag ``tag`` across the members of the union ``field``: each
    member's Literal names its current spelling first, then the old ones still read (a renamed value). None
    where a member's tag is not a Literal field (a callable discriminator)."""
    current: list[Any] = []
    old: list[Any] = []
    for model in _models_in(field.annotation):
        info = model.model_fields.get(tag)
        if info is None or get_origin(info.annotation) is not Literal:
            return None
        first, *rest = get_args(info.annotation)
        current.append(first)
        old.extend(rest)
    return (current, old) if current else None


def _bare(annotation: Any) -> Any:
    """The type inside ``Annotated[...]`` (a tagged union member, a discriminated union)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _expected(field: FieldInfo) -> str:
    annotation = field.annotation
    nullable = _is_union(annotation) and type(None) in get_args(annotation)
    if field.description:
        text = field.description
    elif get_origin(annotation) is Literal:
        text = f"one of {list(get_args(annotation))}"
    elif _models_in(annotation):
        text = "a mapping"
    else:
        text = str(annotation)
    return text + (" or null" if nullable and "null" not in text else "")
