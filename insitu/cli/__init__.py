"""The ``insitu`` command line: the ``main`` group and where each command lives.

One module per command group (``tools``, ``episode`` for run/demo, ``evolve``,
``eval``, ``report``, ``review``, ``mcp``, ``doctor``, ``studio``,
``settings``, ``library`` for tools prune/add/roi and gc); what they share
(exit codes, settings options, store opening, error lines) is in
:mod:`insitu.cli.common`, which imports none of them. Exit codes are documented there.
"""

from __future__ import annotations

import logging

import click

from insitu import __version__
from insitu.cli.common import set_verbose, settings_options
from insitu.cli.doctor import doctor
from insitu.cli.episode import demo, run
from insitu.cli.eval import eval_group
from insitu.cli.evolve import evolve_command
from insitu.cli.library import gc_command, tools_add, tools_prune, tools_roi
from insitu.cli.mcp import mcp_group, tools_add_mcp
from insitu.cli.report import report
from insitu.cli.review import tools_approve, tools_pending, tools_reject
from insitu.cli.settings import show_settings
from insitu.cli.studio import scripted_endpoint
from insitu.cli.tools import tools

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="insitu")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show per-call detail: each model request (role, model, tokens, latency) and "
    "each tool call (outcome, sandbox time), and the library's log lines.",
)
@settings_options
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """insitu: self-evolving, tool-first agents that write, verify and reuse their own tools.

    Settings come from --set and flags, else the environment (INSITU_<NAME>), else
    a config file (--config FILE or ./insitu.toml), else defaults; `insitu settings`
    shows them and where each came from.
    """
    set_verbose(ctx, verbose)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _command in (
    run,
    demo,
    evolve_command,
    report,
    eval_group,
    doctor,
    show_settings,
    scripted_endpoint,
    tools,
    mcp_group,
    gc_command,
):
    main.add_command(_command)
for _command in (
    tools_pending,
    tools_approve,
    tools_reject,
    tools_add_mcp,
    tools_prune,
    tools_add,
    tools_roi,
):
    tools.add_command(_command)
