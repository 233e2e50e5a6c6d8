"""``insitu doctor``: render the checks of :mod:`insitu.doctor` as a table (or JSON).

Exit code 0 when no check FAILed, 3 otherwise, so scripts can run it before
a long evolve or eval run.
"""

from __future__ import annotations

import json

import click
from rich.table import Table
from rich.text import Text

from insitu.cli.common import EXIT_OK, EXIT_RUNTIME, err, out, settings_options
from insitu.context import InsituContext

#: How each status is shown in the table.
STATUS_STYLES = {"ok": "green", "warn": "yellow", "FAIL": "bold red"}


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table.")
@settings_options
@click.pass_obj
def doctor(settings: InsituContext, as_json: bool) -> None:
    """Check the configured models, the sandbox and the tool store.

    For every distinct model of the roles: the endpoint answers, it lists the
    model, a 1-token request works, tool calls come back natively and a JSON
    reply parses. Then the sandbox backend and what it isolates, and whether
    the store opens (--store DIR, --set, --config: as for every command). Each
    request's timeout is the settings' request_timeout_s, capped at 15 s, with
    no retries. Exit code 0 when nothing FAILed, 3 otherwise.
    """
    from insitu.doctor import CHECK_TIMEOUT_CAP_S, has_failures, iter_checks

    rows = []
    with err.status("checking…") as status:
        for row in iter_checks(settings):
            rows.append(row)
            status.update(f"checking… ({len(rows)} done, last: {row.name})")
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        timeout = min(settings.request_timeout_s, CHECK_TIMEOUT_CAP_S)
        table = Table(
            title="insitu doctor",
            title_justify="left",
            caption=f"requests time out after {timeout:g} s, without retries; "
            "docs/models.md explains each failure",
            caption_justify="left",
        )
        table.add_column("check", overflow="fold")
        table.add_column("result")
        table.add_column("detail", overflow="fold")
        for row in rows:
            table.add_row(
                Text(row.name),
                Text(row.status, style=STATUS_STYLES.get(row.status, "")),
                Text(row.detail),
            )
        out.print(table)
    raise SystemExit(EXIT_RUNTIME if has_failures(rows) else EXIT_OK)
