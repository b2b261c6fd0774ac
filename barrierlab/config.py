"""Typed configs: YAML files mapped onto dataclasses, with command-line overrides.

Every stage declares its config as nested dataclasses whose fields carry a docstring (the string
literal right below the field, as in CleanRL). ``load_config`` reads ``--config FILE`` plus overrides
such as ``--optim.lr 0.1`` or ``--task.k=4`` and returns a validated instance. Anything wrong
(unknown or misspelt key, wrong type, value out of range) raises ``UserError`` with one line that names
the file, the key and what is allowed: ``baseline: fasle`` is an error here, never a truthy default.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from barrierlab.errors import UserError


class _Loader(yaml.SafeLoader):
    """YAML as configs need it: ``3e-4`` is a float (YAML 1.1 reads a float without a dot as a string); integers
    are decimal only (YAML 1.1 reads ``1:00`` as 60 and ``010`` as 8); and a key given twice in one mapping is an
    error rather than the last one silently winning."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' given twice", node.value[i][0].start_mark)
        return super().construct_mapping(node, deep)


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {  # SafeLoader's, less its int and float forms, which follow
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT, re.compile(r"""^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[eE][-+]?[0-9]+)
                                                   |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                                                   |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
                              list("-+0123456789."))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class ConfigValueError(ValueError):
    """Raised by a config's ``check()``: ``key`` is the field (relative to that dataclass)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


def require(condition: bool, key: str, message: str) -> None:
    """Range checks inside ``check()`` methods read as one line each."""
    if not condition:
        raise ConfigValueError(key, message)


def require_seed(seed: int, key: str = "seed") -> None:
    """Stages derive generator seeds as ``seed × m + r`` with multipliers m below 2²⁴; below 2³¹ these stay within the
    64 bits a torch generator takes."""
    require(0 <= seed < 2**31, key, f"must be in 0 … 2147483647 (2³¹ - 1), got {seed}")


def require_distinct(values: list, key: str) -> None:
    """A driver's list of runs to make: each entry once (a repeat would run, and count, the same run twice)."""
    repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
    require(not repeated, key, f"lists {', '.join(map(str, repeated))} more than once; give each once")


def require_seeds(seeds: list[int], key: str = "seeds") -> None:
    """A driver's list of seeds: at least one, each a valid seed, each once (checked before the first run starts)."""
    require(len(seeds) >= 1, key, "must list at least one seed")
    require_distinct(seeds, key)
    for i, seed in enumerate(seeds):
        require_seed(seed, f"{key}[{i}]")


# ----------------------------------------------------------------------------- field docs


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under each dataclass field, read from the source (CleanRL style)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


# ----------------------------------------------------------------------------- type coercion


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping ({_describe(typing.get_args(tp)[0])} → {_describe(typing.get_args(tp)[1])})"
    if tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return str(tp)


_SCALARS = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}  # a type and the values it takes


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ``ConfigValueError`` (no silent casts)."""
    if isinstance(value, float) and not math.isfinite(value):  # YAML's .inf and .nan, or 1e400 (read as inf)
        raise ConfigValueError(key, f"expected a finite number, got {value!r}")
    origin = typing.get_origin(tp)
    bad = ConfigValueError(key, f"expected {_describe(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigValueError:
                continue
        raise bad
    if tp in _SCALARS:  # YAML's true is not a 1, nor a 1 a true
        if isinstance(value, _SCALARS[tp]) and (tp is bool or not isinstance(value, bool)):
            return float(value) if tp is float else value
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        if tp is dict:  # free-form (a reward's params): its consumer checks the entries
            return dict(value)
        key_tp, value_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, key): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad
        return build(tp, value, prefix=key + ".")
    raise TypeError(f"unsupported config type {tp} for {key}")


def _unknown_key(cls: type, key: str, prefix: str) -> ConfigValueError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigValueError(prefix + key, f"unknown key{hint}; allowed keys: {', '.join(names)}")


def build(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys, types and ``check()`` ranges."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown_key(cls, str(key), prefix)
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ConfigValueError as err:
            raise ConfigValueError(prefix + err.key, err.message) from None
    return obj


def to_dict(obj: Any) -> Any:
    """Plain YAML-friendly dict of a (nested) config."""
    return dataclasses.asdict(obj)


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


# ----------------------------------------------------------------------------- command line


def _set_path(data: dict, cls: type, path: list[str], raw: str, flag: str) -> None:
    """Put an override into the nested mapping, checking the key path against the dataclasses."""
    node, node_cls = data, cls
    for i, part in enumerate(path):
        names = {f.name: f for f in dataclasses.fields(node_cls)}
        if part not in names:
            err = _unknown_key(node_cls, part, ".".join(path[:i]) + ("." if i else ""))
            raise UserError(f"command line: {flag}: {err.message}")
        tp = typing.get_type_hints(node_cls)[part]
        options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        if i == len(path) - 1:
            takes_text = str in options or any(typing.get_origin(o) is Literal and raw in typing.get_args(o) for o in options)
            # "--run.run_dir 007" stays the string it was typed as; "null" still clears an optional field
            node[part] = raw if takes_text and raw != "null" else _parse_scalar(raw)
            return
        if _is_mapping(tp) and i == len(path) - 2:  # --checkpoints.NAME PATH: a user-named entry of a mapping
            entries = node.setdefault(part, {})
            if not isinstance(entries, dict):
                raise UserError(f"command line: {flag}: '{part}' is a list in the config file; give it as a mapping")
            # a mapping of strings (checkpoint folders, config files) keeps "--checkpoints.x 2024" as typed
            text_values = any(typing.get_origin(o) is dict and typing.get_args(o)[1] is str for o in options)
            entries[path[-1]] = raw if text_values else _parse_scalar(raw)
            return
        if not dataclasses.is_dataclass(tp):
            raise UserError(f"command line: {flag}: '{part}' is not a section, so it has no keys")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"command line: {flag}: '{part}' must be a mapping in the config file")
        node_cls = tp


def _parse_scalar(raw: str):
    """A command-line value read as YAML ("3" → 3, "true" → True, "[1, 2]" → a list), else the string."""
    if raw == "":
        return ""
    try:
        return load_yaml(raw)
    except yaml.YAMLError:
        return raw


def _is_mapping(tp) -> bool:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_mapping(a) for a in typing.get_args(tp))
    return typing.get_origin(tp) is dict or tp is dict


def parse_overrides(argv: list[str]) -> tuple[str | None, list[tuple[str, str | None]], bool]:
    """Split argv into (config path, [(dotted key, raw value, None where the flag has none)], wants_help)."""
    config_path, overrides, wants_help = None, [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            wants_help = True
            i += 1
            continue
        if not arg.startswith("--"):
            raise UserError(f"command line: unexpected argument '{arg}'; use --key value or --key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                value = None  # load_config says so, once it knows whether the key exists
            else:
                value = argv[i + 1]
                i += 1
        i += 1
        if key == "config":
            if not value:  # none, or "--config=", which would fall back to the default config without a word
                raise UserError("command line: --config needs a value (--config FILE)")
            config_path = value
        else:
            overrides.append((key, value))
    return config_path, overrides, wants_help


def _field_default(f: dataclasses.Field, within: Any = None) -> Any:
    """A field's default; inside a section, the section's own (PosttrainConfig's run has other defaults than
    RunConfig's); ``dataclasses.MISSING`` for a required one."""
    if within is not None:
        return getattr(within, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def _as_yaml(value: Any) -> str:
    """A default as it would be written in a config file or on the command line (true, null, [a, b], {k: v})."""
    plain = [to_dict(v) if dataclasses.is_dataclass(v) else v for v in value] if isinstance(value, list) else value
    text = yaml.safe_dump(plain, default_flow_style=True, sort_keys=False, allow_unicode=True, width=10**6)
    return text.removesuffix("\n").removesuffix("\n...")


def help_text(cls: type, prefix: str = "", within: Any = None) -> str:
    lines = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, default = hints[f.name], _field_default(f, within)
        if dataclasses.is_dataclass(tp):
            lines.append(f"\n[{prefix}{f.name}] {docs.get(f.name, '')}")
            lines.append(help_text(tp, prefix + f.name + ".", None if default is dataclasses.MISSING else default))
            continue
        shown = "required" if default is dataclasses.MISSING else _as_yaml(default)
        lines.append(f"  --{prefix}{f.name} ({_describe(tp)}; default {shown})\n      {docs.get(f.name, '')}")
    return "\n".join(lines)


def load_config(cls: type, argv: list[str], default_config: str | None = None, prog: str = "") -> Any:
    """Parse ``--config FILE`` and overrides into a validated ``cls``; ``UserError`` on any problem."""
    config_path, overrides, wants_help = parse_overrides(argv)
    if wants_help:
        config = f"a YAML config (default {default_config})" if default_config else "a YAML config"
        print(f"usage: python -m {prog} [--config FILE] [--section.key value ...]\n  --config FILE\n      {config}: its "
              "values replace the defaults below, and --section.key values replace both\n" + help_text(cls))
        raise SystemExit(0)
    config_path = config_path or default_config
    data: dict = {}
    where = "command line"
    if config_path:
        path = Path(config_path)
        if path.is_dir():
            example = path / Path(default_config or "config.yaml").name
            raise UserError(f"--config '{config_path}' is a folder; pass a YAML file (e.g. {example})")
        if not path.is_file():
            raise UserError(f"config file '{config_path}' not found; pass an existing YAML file with --config")
        try:
            data = load_yaml(path.read_text()) or {}
        except UnicodeDecodeError:
            raise UserError(f"{config_path}: not UTF-8 text; pass a YAML config file") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark else ""
            problem = f" ({err.problem})" if getattr(err, "problem", None) else ""
            raise UserError(f"{config_path}: not valid YAML{at}{problem}; fix the syntax") from None
        if not isinstance(data, dict):
            raise UserError(f"{config_path}: the top level must be a mapping of keys to values")
        where = config_path
    for key, raw in overrides:
        if raw is None:  # a flag without a value: a misspelt or unknown key is the likelier mistake, so it goes first
            _set_path({}, cls, key.split("."), "", f"--{key}")
            raise UserError(f"command line: --{key} needs a value (--key value or --key=value)")
        _set_path(data, cls, key.split("."), raw, f"--{key}")
    try:
        return build(cls, data)
    except ConfigValueError as err:
        overridden = any(k == err.key or err.key.startswith((k + ".", k + "[")) for k, _ in overrides)
        source = "command line" if overridden else where
        raise UserError(f"{source}: key '{err.key}': {err.message}") from None
