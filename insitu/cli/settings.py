"""``insitu settings``: every setting, its value and where it came from."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from insitu.cli.common import cell, loaded_settings, out, sandbox_line, say, settings_options
from insitu.context import default_value, describe_settings


@click.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
@settings_options
def show_settings(as_json: bool) -> None:
    """Print every setting: its value, where it came from, and what it does.

    A value comes from `default`, the config file (its name), the environment
    (`env INSITU_X`), `--set` or a flag such as `--store`; `--set` and flags win
    over the environment, which wins over the config file.
    """
    loaded = loaded_settings()
    rows = [
        (name, shown(getattr(loaded.context, name)), loaded.sources[name], description)
        for name, _default, description in describe_settings()
    ]
    if as_json:
        report = {
            name: {"value": value, "source": source, "default": default_value(name)}
            for name, value, source, _description in rows
        }
        say(json.dumps(report, indent=2))
        return
    table = Table(title="settings (InsituContext)", title_justify="left")
    for column in ("name", "value", "source", "description"):
        table.add_column(column, overflow="fold")
    for name, value, source, description in rows:
        table.add_row(*map(cell, (name, repr(value), source, description)))
    out.print(table)
    say(sandbox_line(loaded.context))


def shown(value: Any) -> Any:
    """A setting's value as printed: a URL's password (checkpoint_url, ...) is hidden."""
    from insitu.checkpoints import redact

    return redact(value) if isinstance(value, str) and "://" in value else value
