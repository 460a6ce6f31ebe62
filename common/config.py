"""Typed configuration: dataclasses, loaded from TOML, overridden from the command line.

Every stage declares its config as nested dataclasses whose fields are created with `doc()`, so the
default and its explanation live side by side. `parse_cli()` builds an argparse parser from them:

    --config FILE.toml          load a TOML file (sections = nested dataclasses)
    --section.field VALUE       override any field (also `--section.field=VALUE`)
    --help                      lists every field with its default and documentation

Unknown keys, in TOML or on the command line, are errors: a typo must never be silently ignored.
A field annotated `Literal["a", "b"]` accepts only those values (exactly, case included): a wrong
choice stops the command before any work instead of reaching a dispatch that would pick a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def doc(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with a default and its documentation. Lists/dicts get a default_factory."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(
            default_factory=lambda: json.loads(json.dumps(value)), metadata={"help": help}, **kwargs
        )
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def choices(tp: Any) -> tuple[Any, ...]:
    """The allowed values of a Literal annotation (also inside Optional[...] or list[...]); () if none."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    for arg in typing.get_args(tp):
        if found := choices(arg):
            return found
    return ()


def _choose(allowed: tuple[Any, ...], value: Any, where: str) -> Any:
    """The member of `allowed` that `value` (a TOML value or command-line string) spells, else ValueError."""
    if isinstance(value, bool) and str(value).lower() in allowed:
        return str(value).lower()  # TOML `use_gpu = true` means the choice "true"
    for kind in dict.fromkeys(type(a) for a in allowed):
        if isinstance(value, bool) and kind is not bool:
            continue  # int(True) == 1: a TOML boolean must not pass for the choice 1
        try:
            candidate = _coerce(kind, value, where)
        except (ValueError, TypeError):
            continue
        # type() too: True == 1, so a bool must not pass for an int choice (or the reverse)
        if any(candidate == a and type(candidate) is type(a) for a in allowed):
            return candidate
    raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a TOML or command-line value to the annotated type."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return _choose(typing.get_args(tp), value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        return [_coerce(item, v, where) for v in value]
    if origin is dict:
        if isinstance(value, str):
            value = json.loads(value)
        return dict(value)
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{where}: not a boolean: {value!r}")
        return bool(value)
    if tp is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{where}: not an integer: {value!r}")
        return int(value)
    if tp is float:
        return float(value)
    if tp is str:
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build `cls` from a (possibly partial) dict; missing fields keep their defaults."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(
            f"unknown config key(s) {sorted(unknown)} in [{where or cls.__name__}]; known: {sorted(names)}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}".strip(".")) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for every leaf field: what MLflow params and --help show."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        data = data.setdefault(p, {})
        if not isinstance(data, dict):
            raise ValueError(f"cannot override {dotted}: {p} is not a section")
    data[parts[-1]] = value


def _field_docs(cls: type, prefix: str = "") -> list[tuple[str, Any, str, Any]]:
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(_field_docs(tp, f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((f"{prefix}{f.name}", default, f.metadata.get("help", ""), tp))
    return rows


def describe(cls: type) -> str:
    """Human-readable list of every field, its default and its documentation."""
    lines = []
    for name, default, help_text, tp in _field_docs(cls):
        allowed = choices(tp)
        one_of = f"one of {', '.join(map(repr, allowed))}; " if allowed else ""
        lines.append(f"  --{name} ({one_of}default: {default!r})\n      {help_text}")
    return "\n".join(lines)


@dataclasses.dataclass
class Flag:
    """A friendly command-line flag mapped onto a config field (e.g. --output -> output.root)."""

    flag: str
    field: str
    help: str
    kind: str = "value"  # "value", "append" (repeatable list) or "true" (store_true)


def parse_cli(cls: type[T], argv: list[str] | None = None, description: str = "", flags: list[Flag] = ()) -> T:
    """Parse --config, friendly flags and --dotted.field overrides into a `cls` instance.

    Precedence: dataclass defaults < TOML file < command line.
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config fields (override any with --field VALUE):\n" + describe(cls),
    )
    parser.add_argument("--config", help="TOML config file (see configs/)")
    for fl in flags:
        if fl.kind == "true":
            parser.add_argument(fl.flag, action="store_true", default=None, dest=fl.field, help=fl.help)
        elif fl.kind == "append":
            parser.add_argument(fl.flag, action="append", default=None, dest=fl.field, help=fl.help)
        else:
            parser.add_argument(fl.flag, default=None, dest=fl.field, help=fl.help)
    args, rest = parser.parse_known_args(argv)

    data: dict[str, Any] = {}
    if args.config:
        with open(args.config, "rb") as fh:
            data = tomllib.load(fh)
    known = {name for name, *_ in _field_docs(cls)}
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--"):
            parser.error(f"unexpected argument {tok!r}")
        key, eq, value = tok[2:].partition("=")
        key = key.replace("-", "_")
        if key not in known:
            parser.error(f"unknown option --{key}; see --help for the config fields")
        if not eq:
            if i + 1 >= len(rest):
                parser.error(f"--{key} needs a value")
            i += 1
            value = rest[i]
        _set_path(data, key, value)
        i += 1
    for fl in flags:
        value = getattr(args, fl.field)
        if value is not None:
            _set_path(data, fl.field, value)
    try:
        return from_dict(cls, data)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
