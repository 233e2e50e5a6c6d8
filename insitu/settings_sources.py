"""Where settings come from: defaults, a config file, the environment, the command line.

Precedence, highest first:

1. the command line: ``--set NAME=VALUE`` and flags such as ``--store DIR``
   (in the order given; the last one wins);
2. the environment: ``INSITU_<NAME>`` and its aliases (see :mod:`insitu.context`);
3. the config file: ``--config FILE``, else ``insitu.toml`` in the current
   directory when there is one;
4. the defaults.

The config file is TOML with the settings as top-level keys::

    max_rounds = 5
    denied_packages = ["requests"]
    openai_base_url = "http://localhost:11434/v1"

A setting that may be ``None`` takes ``"none"`` (TOML has no null). Unknown
keys are rejected with the list of known ones.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from insitu.context import (
    SETTING_NAMES,
    InsituContext,
    SettingError,
    environment_settings,
    parse_setting,
)

#: The config file read from the current directory when no ``--config`` is given.
CONFIG_FILE = "insitu.toml"
#: The source of a setting that nothing changed.
DEFAULT_SOURCE = "default"


@dataclass(frozen=True)
class Override:
    """One setting given on the command line.

    Attributes:
        name: The setting.
        text: Its value, as typed.
        source: The option that gave it (``--set``, ``--store``).
    """

    name: str
    text: str
    source: str = "--set"


@dataclass(frozen=True)
class LoadedSettings:
    """Settings with the source of each value.

    Attributes:
        context: The settings.
        sources: For every setting, where its value came from: ``default``,
            ``env INSITU_X``, the config file's name, ``--set`` or a flag.
    """

    context: InsituContext
    sources: dict[str, str]


def parse_assignment(text: str) -> Override:
    """Parse ``--set NAME=VALUE`` (the value may be empty).

    Raises:
        SettingError: No ``=``, or an unknown setting name.
    """
    name, equals, value = text.partition("=")
    name = name.strip()
    if not equals or not name:
        raise SettingError(f"--set {text!r}: expected NAME=VALUE, e.g. --set max_rounds=5")
    if name not in SETTING_NAMES:
        raise SettingError(
            f"--set {text!r}: unknown setting {name!r}; known settings: "
            f"{', '.join(sorted(SETTING_NAMES))}"
        )
    return Override(name, value)


def read_config_file(path: Path, label: str | None = None) -> dict[str, Any]:
    """Read a TOML config file of settings.

    Args:
        path: The file.
        label: How errors name the file (default: its path).

    Returns:
        Each setting in the file, converted to its type.

    Raises:
        SettingError: The file cannot be read, is not TOML, has an unknown key
            or a value that does not fit its setting.
    """
    label = label or str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingError(f"cannot read config file {label}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingError(f"{label} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(SETTING_NAMES))
    if unknown:
        raise SettingError(
            f"{label}: unknown setting(s) {unknown} (settings are top-level keys); known "
            f"settings: {', '.join(sorted(SETTING_NAMES))}"
        )
    return {
        name: parse_setting(name, value, source=f"{label}: {name}") for name, value in data.items()
    }


def config_file(config: str | Path | None, cwd: Path | None = None) -> Path | None:
    """The config file to read: ``config`` (which must exist), else ``insitu.toml`` if present.

    Raises:
        SettingError: ``config`` is not a file.
    """
    if config is not None:
        path = Path(config).expanduser()
        if not path.is_file():
            raise SettingError(f"config file {config} does not exist")
        return path
    default = (cwd or Path.cwd()) / CONFIG_FILE
    return default if default.is_file() else None


def load_settings(
    *,
    config: str | Path | None = None,
    overrides: Sequence[Override] = (),
    cwd: Path | None = None,
) -> LoadedSettings:
    """Build the settings from every source, remembering where each value came from.

    Args:
        config: A config file (``--config``); default: ``insitu.toml`` in
            ``cwd`` when it exists.
        overrides: Settings from the command line, in the order given.
        cwd: The directory to look for ``insitu.toml`` in (default: the current one).

    Returns:
        The settings and their sources.

    Raises:
        SettingError: A value from any source does not fit its setting, or the
            config file is missing, unreadable or has an unknown key.
    """
    values: dict[str, Any] = {}
    sources = dict.fromkeys(SETTING_NAMES, DEFAULT_SOURCE)
    path = config_file(config, cwd)
    if path is not None:
        label = str(config) if config is not None else CONFIG_FILE
        for name, value in read_config_file(path, label).items():
            values[name], sources[name] = value, label
    for name, (value, variable) in environment_settings().items():
        values[name], sources[name] = value, f"env {variable}"
    for override in overrides:
        source = f"{override.source} {override.name}"  # e.g. --set max_rounds='abc': expected ...
        values[override.name] = parse_setting(override.name, override.text, source=source)
        sources[override.name] = override.source
    return LoadedSettings(InsituContext(**values), sources)
