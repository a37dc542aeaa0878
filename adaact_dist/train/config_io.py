"""YAML and ``--set`` onto :class:`TrainConfig`: precedence CLI > YAML > defaults.

Unknown keys, wrong types and impossible values raise :class:`ConfigError` with one
message naming the dotted key and where its value came from (the YAML file, the
``--set`` argument, or the defaults).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from adaact_dist.train.config import ConfigValueError, TrainConfig

DEFAULTS = "defaults"
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A config problem, reported before any work with the key and its source."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value of the wrong type."""


def resolve_config_path(name: str | Path) -> Path:
    """A path is used as is; a bare name (``a2_resnet50`` or ``a2_resnet50.yaml``) is looked
    up in the repository's ``configs/`` and then in ``./configs``."""
    path = Path(name)
    if path.exists() or len(path.parts) > 1:
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist")
        return path
    candidates = [name] if path.suffix in (".yaml", ".yml") else [f"{name}.yaml", f"{name}.yml"]
    for folder in (CONFIGS_DIR, Path.cwd() / "configs"):
        for candidate in candidates:
            if (folder / candidate).is_file():
                return folder / candidate
    raise ConfigError(
        f"Config {str(name)!r} is neither a file nor a name in {CONFIGS_DIR} "
        f"(available: {', '.join(available_configs()) or 'none'})"
    )


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file (if any), then ``section.key=value`` overrides.

    The returned config carries ``config_sources``: for each dotted key set by the file
    or the command line, where it came from (see :func:`source_of`).
    """
    raw: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            document = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        document = {} if document is None else document
        if not isinstance(document, Mapping):
            raise ConfigTypeError(f"{path} must hold a mapping of sections, not {_kind(document)}")
        for section, body in document.items():
            _check_section(section, body, str(path))
            for key, value in (body or {}).items():
                _set(raw, sources, f"{section}.{key}", value, str(path))
    for item in overrides:
        key, value = parse_override(item)
        _set(raw, sources, key, value, f"--set {item}")
    return build_config(raw, sources)


def parse_override(item: str) -> tuple[str, Any]:
    """``optim.lr=2.0`` -> ``("optim.lr", 2.0)``; the value is read as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Invalid --set {item!r}: must be section.key=value, e.g. optim.lr=2.0")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"Invalid --set {item!r}: the value is not YAML ({error})") from None
    return key.strip(), value


def build_config(raw: Mapping[str, Mapping[str, Any]], sources: Mapping[str, str]) -> TrainConfig:
    """Typed construction of every section; errors name the key and its source."""
    hints = typing.get_type_hints(TrainConfig)
    sections = {}
    # Sections the user wrote are checked first, so their errors win over defaults'.
    order = [s for s in raw if s in hints] + [s for s in _fields(TrainConfig) if s not in raw]
    for section in order:
        cls = hints[section]
        field_hints = typing.get_type_hints(cls)
        kwargs = {
            name: _coerce(value, field_hints[name], f"{section}.{name}", sources)
            for name, value in raw.get(section, {}).items()
        }
        sections[section] = _construct(cls, kwargs, sources)
    sections = {name: sections[name] for name in _fields(TrainConfig)}
    config = _construct(TrainConfig, sections, sources)
    config.config_sources = dict(sources)  # type: ignore[attr-defined]
    return config


def source_of(config: TrainConfig, key: str) -> str:
    """Where ``key``'s value came from: a file path, ``--set ...``, or ``defaults``."""
    return _source(getattr(config, "config_sources", {}), key)


def _source(sources: Mapping[str, str], key: str) -> str:
    """``model.kwargs.pretrained`` came from wherever ``model.kwargs`` did."""
    return sources.get(key) or sources.get(".".join(key.split(".")[:2]), DEFAULTS)


def config_error(config: TrainConfig, error: ConfigValueError) -> ConfigError:
    """Attach the source of ``error.key`` to a check made after loading (world size...)."""
    return ConfigError(_with_source(error, source_of(config, error.key)))


def config_to_dict(config: TrainConfig) -> dict[str, dict[str, Any]]:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return {
        section: {
            f.name: plain(getattr(getattr(config, section), f.name)) for f in _fields_of(section)
        }
        for section in _fields(TrainConfig)
    }


def dump_config(config: TrainConfig) -> str:
    """The resolved config as YAML; loading it back gives an equal config."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _fields_of(section: str) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(typing.get_type_hints(TrainConfig)[section])


def _check_section(section: Any, body: Any, source: str) -> None:
    if section not in _fields(TrainConfig):
        raise ConfigError(
            f"Unknown config section {section!r} in {source} "
            f"(sections: {', '.join(_fields(TrainConfig))})"
        )
    if body is not None and not isinstance(body, Mapping):
        raise ConfigTypeError(
            f"Invalid {section}={body!r} in {source}: must be a mapping of {section} keys"
        )


def _set(raw: dict, sources: dict, key: str, value: Any, source: str) -> None:
    section, _, rest = key.partition(".")
    _check_section(section, {}, source)
    if not rest:
        raise ConfigError(f"Invalid key {key!r} in {source}: must be section.key, e.g. optim.lr")
    name, _, subkey = rest.partition(".")
    names = [f.name for f in _fields_of(section)]
    if name not in names:
        raise ConfigError(
            f"Unknown config key {f'{section}.{name}'!r} in {source} "
            f"({section} has: {', '.join(names)})"
        )
    body = raw.setdefault(section, {})
    if subkey:  # --set model.kwargs.channels=[...] reaches into a dict field
        hint = typing.get_type_hints(typing.get_type_hints(TrainConfig)[section])[name]
        if typing.get_origin(hint) is not dict:
            raise ConfigError(f"Invalid key {key!r} in {source}: {section}.{name} is not a mapping")
        target = body.setdefault(name, {})
        parts = subkey.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    else:
        body[name] = value
    sources[f"{section}.{name}"] = source


def _construct(cls: type, kwargs: dict[str, Any], sources: Mapping[str, str]) -> Any:
    try:
        return cls(**kwargs)
    except ConfigValueError as error:
        raise ConfigError(_with_source(error, _source(sources, error.key))) from None


def _with_source(error: ConfigValueError, source: str) -> str:
    head, _, tail = str(error).partition(": must")
    where = "(default)" if source == DEFAULTS else f"in {source}"
    return f"{head} {where}: must{tail}"


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _coerce(value: Any, hint: Any, key: str, sources: Mapping[str, str]) -> Any:
    """``value`` checked against ``hint``; ints widen to floats, nothing else is converted
    except float strings such as ``1e-8`` (which YAML 1.1 reads as text)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def fail(requirement: str) -> typing.NoReturn:
        where = sources.get(key, DEFAULTS)
        raise ConfigTypeError(f"Invalid {key}={value!r} in {where}: must be {requirement}")

    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            try:
                return _coerce(value, rest[0], key, sources)
            except ConfigTypeError:
                fail(f"{_describe(rest[0])} or null")
        fail(" or ".join(_describe(a) for a in args))
    if origin is Literal:
        if value not in args or isinstance(value, bool):
            fail(_describe(hint))
        return value
    if hint is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                fail("a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            fail(f"a list of {len(args)} numbers")
        return tuple(_coerce(v, a, key, sources) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, Mapping):
            fail("a mapping")
        return dict(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            fail("a list")
        return [_coerce(v, args[0], key, sources) for v in value]
    raise AssertionError(f"unsupported config type {hint!r} for {key}")


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, str(hint)
    )
