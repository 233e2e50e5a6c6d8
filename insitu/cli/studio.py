"""``insitu scripted-endpoint``: the scripted test team as an OpenAI-compatible endpoint.

So that Studio (``langgraph dev``), the SDK or any OpenAI client can be tried
offline: point ``OPENAI_BASE_URL`` at the printed URL. The replies come from a
scripted test double, not a model, and every line this command prints says so.
"""

from __future__ import annotations

import threading

import click

from insitu.cli.common import EXIT_OK, err, say, settings_options


@click.command("scripted-endpoint")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--api-key", default="not-needed", show_default=True, help="The key clients send.")
@settings_options
def scripted_endpoint(host: str, port: int, api_key: str) -> None:
    """Serve the scripted test team as an OpenAI-compatible endpoint (offline Studio).

    Start it, then in another shell: OPENAI_BASE_URL=<printed URL> OPENAI_API_KEY=<key>
    langgraph dev. Stop it with Ctrl-C. Its replies are a test double's, not a model's.
    """
    from insitu.testing import ScriptedOpenAIServer
    from insitu.testing.team import SCRIPTED_LABEL, ScriptedTeam

    server = ScriptedOpenAIServer(
        ScriptedTeam().openai_responder(), host=host, port=port, api_key=api_key
    )
    with server:
        err.print(f"[bold yellow]{SCRIPTED_LABEL}[/]")
        say(f"serving the scripted team at {server.base_url} (Ctrl-C to stop)")
        say(f"export OPENAI_BASE_URL={server.base_url} OPENAI_API_KEY={api_key}")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            say("stopped")
    raise SystemExit(EXIT_OK)
