"""Configs are dataclasses whose fields carry help text; this module turns them into
command-line flags, reads them from YAML presets, applies `key=value` overrides, and saves
the resolved config next to every output.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo:
    ...     lr: float = option(1e-5, "learning rate")
    ...     name: str = option("x", "a name")
    >>> apply_overrides(Demo(), ["lr=0.5"]).lr
    0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from score_distill.storage import atomic_write_text

C = TypeVar("C")


class UsageError(ValueError):
    """A mistake in what the user gave (a flag, a config file, an override): the command line
    prints it as one line, `score-distill <command>: <message>`, and exits 2."""


class _Text(str):
    """A value typed on the command line, not yet read: only such text may spell None
    ("null", "none", "~"); a string loaded from YAML is kept as it is."""


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and help text (mutable defaults are copied)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints.get(f.name, str)


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML or command-line value to the field's type; raise with the field name."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp) and (
                value is None or (isinstance(value, _Text) and value.strip().lower() in ("none", "null", "~"))):
            return None
        if len(args) == 1:
            return _convert(args[0], value, where)
        for arg in args:  # the first member that reads the value
            try:
                return _convert(arg, value, where)
            except UsageError:
                pass
        names = [" or ".join(map(repr, typing.get_args(a))) if typing.get_origin(a) is typing.Literal
                 else getattr(a, "__name__", str(a)) for a in args]
        raise UsageError(f"{where}: cannot read {value!r} as {' or '.join(names)}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value in allowed:
            return str(value) if isinstance(value, _Text) else value
        raise UsageError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):  # a whole section given on the command line as YAML
            value = _yaml_value(value, tp, where)
        if isinstance(value, dict):
            return from_dict(tp, value)
        raise UsageError(f"{where}: expected a mapping for {tp.__name__}")
    if isinstance(value, str) and (tp in (int, float, bool, list, dict) or origin in (list, dict)):
        value = _yaml_value(value, tp, where)
    try:
        if tp in (int, float) and isinstance(value, bool):
            raise ValueError  # bool is an int subclass; `steps=true` is a mistake
        if tp is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            converted = tp(value)
            if tp is float and math.isnan(converted):
                raise ValueError  # never meant: every comparison with it is False, every check passes
            return converted
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{where}: cannot read {value!r} as {tp.__name__}") from None
    return value


def _yaml_value(text: str, tp: Any, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise UsageError(f"{where}: cannot read {text!r} as {getattr(tp, '__name__', tp)}") from None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def from_dict(cls: type[C], data: dict[str, Any], base: Any = None) -> C:
    """Build config `cls` from a mapping; unknown keys raise (a typo must not pass silently).
    Keys the mapping leaves out keep their value in `base` (default: the field's own default).
    A nested section given in part is read over ITS field's default, not over its class's:
    `rl: {rollout: {max_new_tokens: 128}}` keeps the RL rollout's sampling temperature 1.0
    (`rl_rollout_config`), where the bare `RolloutConfig` is greedy. Every problem with the
    values, the config's own checks (`__post_init__`) included, is a `UsageError`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if not isinstance(data, dict):
        raise UsageError(f"{cls.__name__}: expected a mapping of its fields, got {type(data).__name__}")
    unknown = set(data) - set(fields)
    if unknown:
        raise UsageError(f"{cls.__name__}: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {} if base is None else {k: getattr(base, k) for k, f in fields.items() if f.init}
    for k, v in data.items():
        tp, where = _field_type(cls, fields[k]), f"{cls.__name__}.{k}"
        if dataclasses.is_dataclass(tp) and isinstance(v, str):  # a whole section as YAML text
            v = _yaml_value(v, tp, where)
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            under = getattr(base, k) if base is not None else _field_default(fields[k])
            kwargs[k] = from_dict(tp, v, under if isinstance(under, tp) else None)
        else:
            kwargs[k] = _convert(tp, v, where)
    try:
        return cls(**kwargs)
    except UsageError:
        raise
    except ValueError as exc:  # a config's __post_init__ rejects a value it was given
        raise UsageError(str(exc)) from None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def apply_overrides(config: C, overrides: list[str]) -> C:
    """Apply `a.b=value` overrides (dotted paths reach nested config dataclasses)."""
    data = to_dict(config)
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise UsageError(f"override {key!r}: {p!r} is not a section")
            node = node[p]
        if parts[-1] not in node:
            raise UsageError(f"override {key!r}: unknown key {parts[-1]!r}")
        # Kept as text: `_convert` parses it by the field's type, so a str field keeps
        # exactly what was given ("1.10", "no", "null").
        node[parts[-1]] = _Text(raw)
    return from_dict(type(config), data)


def load_yaml(cls: type[C], path: str | Path, overrides: list[str] | None = None) -> C:
    """Config `cls` from a YAML file, then `overrides`; an unreadable file is a UsageError."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UsageError(f"{path}: cannot read it as a YAML config ({reason})") from None
    return apply_overrides(from_dict(cls, data), overrides or [])


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config (YAML) so every output says how it was made."""
    atomic_write_text(path, yaml.safe_dump(json.loads(json.dumps(to_dict(config))), sort_keys=False))


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add a `--flag` per field of `cls`, named by its dotted path as in YAML (nested
    dataclasses give `--section.field`), spelt with dashes or as the YAML spells it:
    `--eval-rollout.max-new-tokens 96` and `--eval_rollout.max_new_tokens 96` are the same flag. A list or
    mapping field takes YAML (`--suites '[math]'`). Defaults are None so that only flags the
    user gave override the config. Every sub-command reads its settings this way."""
    for f in dataclasses.fields(cls):
        tp = _field_type(cls, f)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            add_arguments(parser, tp, prefix=f"{name}.")
            continue
        flags = dict.fromkeys(["--" + name.replace("_", "-"), "--" + name])  # one spelling when they agree
        parser.add_argument(*flags, dest=name, default=None, metavar=name.split(".")[-1].upper(),
                            help=f.metadata.get("help", "").replace("%", "%%"))  # argparse formats help with %


OUT_HELP = "output directory (rerun the same command to resume)"


def add_command_arguments(parser: argparse.ArgumentParser, cls: type, out_help: str = OUT_HELP) -> None:
    """A sub-command's `--out`, its `--config` YAML and a flag per field of its config `cls`."""
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--config", default=None, help="YAML file of the settings below (flags override it)")
    add_arguments(parser, cls)


def command_config(args: argparse.Namespace, cls: type[C], extra: list[str] | None = None) -> C:
    """A sub-command's config: its `--config` YAML when given (else the defaults), then the
    flags the user gave, then `extra` overrides."""
    overrides = overrides_from_args(args, cls) + (extra or [])
    return load_yaml(cls, args.config, overrides) if args.config else apply_overrides(cls(), overrides)


def overrides_from_args(args: argparse.Namespace, cls: type, prefix: str = "") -> list[str]:
    """The `key=value` overrides for the flags the user actually gave."""
    out: list[str] = []
    for f in dataclasses.fields(cls):
        tp = _field_type(cls, f)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += overrides_from_args(args, tp, prefix=f"{name}.")
            continue
        value = getattr(args, name, None)
        if value is not None:
            out.append(f"{name}={value}")
    return out
