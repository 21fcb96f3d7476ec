"""Config loading: YAML files + ``dotted.key=value`` overrides validated by pydantic models.

Every config model forbids unknown keys. Validation errors become one :class:`ConfigError` line
per problem that names the field and the reason, e.g.
``student.num_steps: Input should be greater than or equal to 1 (got 0)``.

YAML is read exactly or refused (:class:`StrictLoader`, for files and override values alike):
a duplicated key is an error naming both lines (never "the last one wins"); aliases may not
expand the document beyond :data:`MAX_YAML_NODES` values (a "billion laughs" file is refused
while it is parsed, in microseconds) and nesting beyond :data:`MAX_YAML_DEPTH` levels is
refused. Booleans are not numbers: ``iterations: yes`` is an error, not 1 (every
:class:`StrictModel` int / float field refuses ``true`` / ``false``).
"""

from __future__ import annotations

import os
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from fewstep.errors import ConfigError
from fewstep.utils.files import read_regular_bytes

M = TypeVar("M", bound=BaseModel)

#: largest seed every generator accepts (numpy's ``np.random.seed`` takes 0 .. 2**32 - 1)
MAX_SEED = 2**32 - 1
#: deepest YAML nesting read
MAX_YAML_DEPTH = 64
#: most values a YAML document may stand for once every alias is expanded
MAX_YAML_NODES = 100_000


class YAMLRefused(yaml.YAMLError):
    """A YAML document fewstep does not read (duplicate key, alias bomb, too deep)."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, alias expansion beyond
    :data:`MAX_YAML_NODES` values and nesting beyond :data:`MAX_YAML_DEPTH` levels."""

    def compose_document(self) -> Node:
        self._depth = 0
        node = super().compose_document()
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise YAMLRefused(f"aliases expand it to more than {MAX_YAML_NODES} values (an "
                              "alias bomb?); write the values out")
        return node

    def compose_node(self, parent: Node | None, index: object) -> Node:
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise YAMLRefused(f"nested deeper than {MAX_YAML_DEPTH} levels (at line "
                                  f"{mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<:" keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it
                break
            if first is not None:
                raise YAMLRefused(f"duplicate key {reprlib.repr(key)} at line {line} (first at "
                                  f"line {first}); remove one of them")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Node, memo: dict[int, int]) -> int:
    """Values ``node`` stands for once every alias is expanded: memoised per node object, so
    measuring costs the *written* size, and saturated just above the limit."""
    k = id(node)
    if k in memo:
        return memo[k]
    if isinstance(node, ScalarNode):
        n = 1
    elif isinstance(node, SequenceNode):
        n = 1 + sum(_expanded_size(c, memo) for c in node.value)
    elif isinstance(node, MappingNode):
        n = 1 + sum(_expanded_size(a, memo) + _expanded_size(b, memo) for a, b in node.value)
    else:
        n = 1
    memo[k] = min(n, MAX_YAML_NODES + 1)
    return memo[k]


def yaml_load(text: str) -> Any:
    """Parse YAML text with :class:`StrictLoader` (``yaml.YAMLError`` for what it refuses;
    ``RecursionError`` turned into one)."""
    loader = StrictLoader(text)  # a SafeLoader subclass (what yaml.load does with it)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise YAMLRefused(f"nested deeper than {MAX_YAML_DEPTH} levels") from None
    finally:
        loader.dispose()


def _device_name(v: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", v):
        raise ValueError("must be cpu, cuda, cuda:<index> or mps")
    return v


#: a seed field: ``0 <= seed <= 2**32 - 1`` (what torch, numpy and ``random`` all take)
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
#: a device name field (availability is checked where the device is used)
DeviceName = Annotated[str, AfterValidator(_device_name)]


def _numeric_without_bool(annotation: Any) -> bool:
    """``True`` if ``annotation`` takes ints / floats but not booleans (anywhere inside
    ``X | None``, ``Annotated``, ``list[...]``, ``tuple[...]``)."""
    found: set[str] = set()

    def walk(t: Any) -> None:
        if t is bool:
            found.add("bool")
        elif t in (int, float):
            found.add("num")
        origin = typing.get_origin(t)
        if origin is not None or isinstance(t, types.UnionType):
            for a in typing.get_args(t):
                walk(a)

    walk(annotation)
    return "num" in found and "bool" not in found


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, list | tuple):
        return any(_has_bool(v) for v in value)
    return False


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are re-validated on assignment,
    float fields reject NaN / Inf, and int / float fields reject booleans (``yes`` / ``true``
    is not 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        if _has_bool(v) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and _numeric_without_bool(field.annotation):
                raise ValueError("a boolean is not a number; write the number")
        return v


def user_path(value: str) -> str:
    """Normalise a path taken from a config: expand ``~`` and resolve it to an absolute path.

    The rule for config paths: they must be non-empty and free of NUL bytes; they are expanded
    and resolved once, when the config is validated, so the resolved config (``config.yaml``,
    checkpoints) records exactly which file or folder was used. fewstep only *reads* from such
    paths (``teacher.path``) or writes files it names itself (hash-named shards below
    ``cache.dir``); everything else a run writes goes below its run directory (``--out``).
    Raises ``ValueError`` (reported as a one-line config error).
    """
    if not value or not value.strip():
        raise ValueError("must be a non-empty path")
    if "\x00" in value:
        raise ValueError("must not contain a NUL byte")
    return str(Path(value).expanduser().resolve())


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 6
_REPR.maxstring, _REPR.maxother = 80, 80


def _short_repr(value: Any) -> str:
    """``repr`` bounded in size (a value built from aliases may be huge)."""
    return _REPR.repr(value)


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line per error: ``field.path: message (got value)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if prefix:
            loc = f"{prefix}.{loc}"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        got = e.get("input")
        got_s = "" if e["type"] in ("missing", "value_error") or isinstance(got, dict) \
            else f" (got {_short_repr(got)})"
        # a model-level check names its own field ("teacher.prompts: ..."): no "<root>: "
        lines.append(msg if loc == "<root>" and e["type"] == "value_error" else
                     f"{loc}: {msg}{got_s}")
    return "; ".join(lines)


def validate(model: type[M], data: dict[str, Any], source: str = "config",
             overrides: list[str] | None = None) -> M:
    """Build ``model`` from ``data`` or raise a one-line :class:`ConfigError`.

    The message blames ``source`` (e.g. the YAML file), except for a field that one of
    ``overrides`` set: that error names the override (``override 'train.lr=-1': ...``).
    """
    try:
        return model.model_validate(data)
    except ValidationError as e:
        blamed = _blamed_override(e, overrides or [])
        where = f"override {blamed!r}" if blamed else f"invalid {source}"
        raise ConfigError(f"{where}: {format_validation_error(e)}") from None


def _blamed_override(err: ValidationError, overrides: list[str]) -> str | None:
    """The last override whose key is (a prefix of, or below) the first error's field."""
    errors = err.errors()
    if not errors:
        return None
    loc = [str(p) for p in errors[0]["loc"]]
    named = re.match(r"(?:Value error, )?([\w.]+): ", errors[0]["msg"])
    if not loc and named:  # a model-level check names its field in the message
        loc = named.group(1).split(".")[:1]  # its section: any override below it may be at fault
    for item in reversed(overrides):
        key = item.split("=", 1)[0].split(".")
        n = min(len(key), len(loc))
        if n and key[:n] == loc[:n]:
            return item
    return None


def yaml_reason(err: yaml.YAMLError) -> str:
    """A YAML error as one line: ``problem at line L, column C``."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3); the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in item:
        raise ConfigError(f"override {_short_repr(item)} must look like dotted.key=value")
    key, raw = item.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {_short_repr(item)} has an empty key")
    try:
        value = yaml_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {_short_repr(item)}: value is not valid YAML "
                          f"({yaml_reason(e)})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``dotted.key=value`` in a (nested) dict, creating sections as needed."""
    out = dict(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for p in path[:-1]:
            child = node.get(p)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node[p] = dict(child)
            node = node[p]
        node[path[-1]] = value
    return out


def read_text_file(path: str | os.PathLike[str], what: str = "config file",
                   field: str | None = None) -> str:
    """The UTF-8 text of ``path``, or a one-line :class:`ConfigError` (naming ``field`` when
    given) saying why not: missing, a directory, not a regular file (a FIFO or device is
    refused without being opened), unreadable, binary (NUL bytes) or not UTF-8 (the byte
    offset of the first bad byte)."""
    p = Path(path)
    pre = f"{field}: " if field else ""
    if p.is_dir():
        raise ConfigError(f"{pre}{p} is a directory, expected a {what}")
    if not p.exists():
        raise ConfigError(f"{pre}{what} not found: {p}")
    try:
        raw = read_regular_bytes(p, field or str(p))
    except ConfigError as e:
        raise ConfigError(f"{pre}{str(e).split(': ', 1)[-1]} (expected a {what})") from None
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                      (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if raw.startswith(bom):
            raise ConfigError(f"{pre}{p} is {name} text, expected a {what} in UTF-8 (re-save "
                              "it as UTF-8)")
    if b"\x00" in raw:
        raise ConfigError(f"{pre}{p} is a binary file, expected a {what} (UTF-8 text)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{pre}{p} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                          f"{e.start}); expected a {what}") from None


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, with a :class:`ConfigError` for missing / malformed files."""
    p = Path(path)
    text = read_text_file(p)
    try:
        data = yaml_load(text)
    except YAMLRefused as e:
        raise ConfigError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {yaml_reason(e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping at the top level, got {type(data).__name__}")
    if any(not isinstance(k, str) for k in data):
        raise ConfigError(f"{p}: every top-level key must be a string")
    return data


def load_config(model: type[M], path: str | os.PathLike[str] | None,
                overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> M:
    """``base`` <- YAML file <- overrides, validated against ``model``."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = _deep_merge(data, load_yaml(path))
    data = apply_overrides(data, overrides or [])
    return validate(model, data, str(path) if path else "config", overrides)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = _deep_merge(out[k], v) if both else v
    return out


def dump_yaml(model: BaseModel) -> str:
    """The resolved config as YAML (what a run directory stores)."""
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)
