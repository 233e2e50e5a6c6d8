"""``insitu doctor``: check that the configured models, sandbox and store will work.

Every check is a function returning :class:`Check` rows (name, status,
detail), so the CLI only renders them and a run's preflight can reuse them.
Statuses: ``ok``; ``warn`` (works, but not as well as it could, or could not
be confirmed); ``FAIL`` (a run would fail). Each check is bounded in time: a
model request gets the settings' ``request_timeout_s`` capped at
:data:`CHECK_TIMEOUT_CAP_S` and no retries, and every check runs under a hard
deadline (:func:`bounded`), so a hung endpoint or a locked database gives a
FAIL row, never a hang or a traceback.

Per distinct configured model (roles may use different ones):

* **endpoint**: ``GET {base_url}/models`` answers (``provider:model``
  settings use the provider's own client: its package must be installed);
* **model listed**: the list the server offers names the model (a warning
  when it does not: some servers accept any name);
* **completion**: a 1-token request (:func:`insitu.llm.probe_completion`);
* **tool calling**: native tool calls come back
  (:func:`insitu.llm.probe_tool_calling`), else the text protocol is used;
* **JSON replies**: a tiny JSON object is asked for and parsed as the roles'
  structured replies are (:func:`insitu.structured.parse_reply`).

Then the sandbox backend and what it isolates, and the tool store's health:
its records, and (read without writing) whether it is read-only, its index,
its checkpoints and who holds its writer lock, each with the repair
(``docs/troubleshooting.md``).
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel

from insitu import aio
from insitu.context import ROLES, InsituContext
from insitu.llm import (
    JSON_CHECK_SYSTEM,
    OPENAI_DEFAULT_URL,
    PROVIDER_PACKAGES,
    ConfigurationError,
    ModelEndpointError,
    build_chat_model,
    call_model,
    classify,
    needs_bind_tools,
    probe_completion,
    probe_tool_calling,
    provider_of,
)

Status = Literal["ok", "warn", "FAIL"]
OK: Status = "ok"
WARN: Status = "warn"
FAIL: Status = "FAIL"

#: The longest a model request of the doctor may take, whatever ``request_timeout_s`` says.
CHECK_TIMEOUT_CAP_S = 15.0
#: Time a check may take beyond its request timeout (connecting, building a client).
_DEADLINE_GRACE_S = 5.0
#: Output tokens the JSON check allows: the object asked for needs about 15.
JSON_CHECK_MAX_TOKENS = 64
#: Output tokens the tool-calling check allows: one small tool call needs a few dozen.
TOOL_CHECK_MAX_TOKENS = 256
JSON_CHECK_REQUEST = (
    'Reply with exactly this JSON object and nothing else: {"status": "ok", "number": 7}'
)

#: What each sandbox backend isolates, in one line (the sandbox's own statement is longer).
BWRAP_ISOLATION = (
    "isolated: filesystem (read-only system, only the call's workdir writable), network (a "
    "tool that declares it reaches public addresses only, never the host's loopback or private "
    "ranges), processes (own pid namespace, a seccomp filter), environment (allowed secrets "
    "only); rlimits and a timeout"
)
DEGRADED_ISOLATION = (
    "NOT isolated: filesystem and network; only rlimits, a timeout, a scrubbed environment "
    "and its own session"
)


@dataclass(frozen=True)
class Check:
    """One row of the doctor's report.

    Attributes:
        name: What was checked (``completion (gpt-4o-mini)``, ``store``, …).
        status: ``ok``, ``warn`` or ``FAIL``.
        detail: One line: what was found, and what to do about a problem.
    """

    name: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        """The row as plain data (for ``--json``)."""
        return asdict(self)


@dataclass(frozen=True)
class ModelUse:
    """A distinct model setting and the roles that use it (in ``ROLES`` order)."""

    setting: str
    roles: tuple[str, ...]

    @property
    def first_role(self) -> str:
        """The role whose requests stand for the model (the first one a run calls)."""
        return self.roles[0]

    def roles_text(self) -> str:
        """The roles, for a detail line."""
        return "every role" if len(self.roles) == len(ROLES) else ", ".join(self.roles)


@dataclass(frozen=True)
class ModelList:
    """What ``GET {base_url}/models`` gave.

    Attributes:
        url: The URL asked.
        status: The HTTP status, or ``None`` when no response came.
        ids: The model ids listed, or ``None`` when the server offers no list.
        error: The endpoint error when no response came (connection refused, timeout).
        seconds: How long the request took.
    """

    url: str
    status: int | None
    ids: list[str] | None
    error: ModelEndpointError | None
    seconds: float


def one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace to one line and cut it to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def check_timeout_s(context: InsituContext) -> float:
    """The timeout of one of the doctor's requests: the settings', capped."""
    return min(context.request_timeout_s, CHECK_TIMEOUT_CAP_S)


def doctor_settings(context: InsituContext) -> InsituContext:
    """The settings the doctor's requests use: the capped timeout and no retries.

    A check must answer quickly; retrying a dead endpoint would only delay the
    FAIL row that says so.
    """
    timeout = check_timeout_s(context)
    return replace(
        context,
        request_timeout_s=timeout,
        max_retries=0,
        retry_budget_s=min(context.retry_budget_s, timeout + _DEADLINE_GRACE_S),
    )


def bounded(name: str, check: Callable[[], list[Check]], deadline_s: float) -> list[Check]:
    """Run a check under a hard deadline; a late or crashed check gives a FAIL row.

    The check runs in a daemon thread, so a check stuck in a call that has no
    timeout of its own is abandoned (not waited for) when the deadline passes.

    Args:
        name: The row's name if the check gives none.
        check: Produces the rows.
        deadline_s: Seconds to wait for it.

    Returns:
        The check's rows, or one FAIL row saying why there are none.
    """
    outcome: list[list[Check]] = []

    def target() -> None:
        try:
            outcome.append(check())
        except Exception as exc:  # a check must give a row, whatever went wrong in it
            outcome.append([Check(name, FAIL, one_line(f"{type(exc).__name__}: {exc}"))])

    thread = threading.Thread(target=target, name=f"insitu-doctor-{name}", daemon=True)
    thread.start()
    thread.join(deadline_s)
    if thread.is_alive() or not outcome:
        return [Check(name, FAIL, f"no answer within {deadline_s:.0f} s; the check was abandoned")]
    return outcome[0]


# --------------------------------------------------------------------- models


def distinct_models(context: InsituContext) -> list[ModelUse]:
    """The distinct model settings of the roles, each with the roles that use it."""
    roles_of: dict[str, list[str]] = {}
    for role in ROLES:
        roles_of.setdefault(context.model_for(role), []).append(role)
    return [ModelUse(setting, tuple(roles)) for setting, roles in roles_of.items()]


def endpoint_url(setting: str, context: InsituContext) -> str | None:
    """The OpenAI-compatible base URL serving a model setting (``None``: a provider's client).

    A bare name, or ``openai:NAME``, is served by ``openai_base_url`` (else
    OpenAI's own endpoint); any other ``provider:model`` by the provider's client.
    """
    provider = provider_of(setting)
    if provider not in (None, "openai"):
        return None
    return context.openai_base_url or OPENAI_DEFAULT_URL


def served_name(setting: str) -> str:
    """The model name sent to an OpenAI-compatible endpoint (``openai:`` removed)."""
    return setting.partition(":")[2] if provider_of(setting) == "openai" else setting


def _listed_ids(payload: Any) -> list[str] | None:
    """Model ids from a ``/models`` answer (OpenAI's ``data``, or a ``models`` list)."""
    if not isinstance(payload, dict):
        return None
    for key, id_fields in (("data", ("id",)), ("models", ("id", "model", "name"))):
        entries = payload.get(key)
        if isinstance(entries, list):
            ids = []
            for entry in entries:
                if isinstance(entry, str):
                    ids.append(entry)
                elif isinstance(entry, dict):
                    found = next((str(entry[f]) for f in id_fields if entry.get(f)), None)
                    if found is not None:
                        ids.append(found)
            return ids
    return None


def fetch_model_list(use: ModelUse, context: InsituContext) -> ModelList:
    """``GET {base_url}/models`` for a bare model setting, within the doctor's timeout.

    Args:
        use: The model and its roles (the first role names the endpoint error).
        context: Supplies the endpoint and the timeout.

    Returns:
        What the endpoint answered, or the endpoint error when it did not.
    """
    import httpx

    base_url = endpoint_url(use.setting, context) or OPENAI_DEFAULT_URL
    url = base_url.rstrip("/") + "/models"
    api_key = os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    started = time.monotonic()
    try:
        response = httpx.get(url, headers=headers, timeout=check_timeout_s(context))
    except httpx.HTTPError as exc:
        classified = classify(exc)
        error = ModelEndpointError(
            role=use.first_role,
            model=served_name(use.setting),
            url=base_url,
            transient=classified.transient,
            reason=classified.reason,
            hint=f"Check that the server at {base_url} is running and reachable "
            "(OPENAI_BASE_URL), or raise request_timeout_s for a slow one.",
        )
        return ModelList(url, None, None, error, time.monotonic() - started)
    seconds = time.monotonic() - started
    ids = None
    if response.is_success:
        try:
            ids = _listed_ids(response.json())
        except ValueError:  # not JSON: the server offers no list here
            ids = None
    return ModelList(url, response.status_code, ids, None, seconds)


def module_installed(name: str) -> bool:
    """Whether the module ``name`` can be imported (found without importing it)."""
    return importlib.util.find_spec(name) is not None


def check_endpoint(use: ModelUse, context: InsituContext) -> tuple[Check, ModelList | None]:
    """Whether the model's endpoint answers (or, for a provider, whether its client is installed).

    Returns:
        The row, and the endpoint's model list (``None`` for a provider's client,
        or when no endpoint is configured).
    """
    from insitu.services import NO_ENDPOINT_MESSAGE

    name = f"endpoint ({use.setting})"
    provider = provider_of(use.setting)
    if endpoint_url(use.setting, context) is None:
        package = PROVIDER_PACKAGES[str(provider)]
        if not module_installed(package.replace("-", "_")):
            return Check(
                name,
                FAIL,
                f"the {provider} provider needs the {package} package: pip install {package} "
                "(docs/models.md lists insitu's extras)",
            ), None
        return Check(
            name,
            OK,
            f"the {provider} provider's client ({package}) is used; no endpoint to list; "
            f"roles: {use.roles_text()}",
        ), None
    if not context.openai_base_url and not os.environ.get("OPENAI_API_KEY"):
        return Check(name, FAIL, one_line(NO_ENDPOINT_MESSAGE, 500)), None
    listing = fetch_model_list(use, context)
    base_url = endpoint_url(use.setting, context)
    if listing.error is not None:
        return Check(name, FAIL, listing.error.one_line()), listing
    status = listing.status
    answered = f"{base_url} answers (GET /models: HTTP {status} in {listing.seconds:.2f} s)"
    if status in (401, 403):
        return Check(
            name,
            FAIL,
            f"{answered}: the API key was refused; check OPENAI_API_KEY",
        ), listing
    if status is not None and status >= 500:
        return Check(name, WARN, f"{answered}: a server error; roles: {use.roles_text()}"), listing
    return Check(name, OK, f"{answered}; roles: {use.roles_text()}"), listing


def check_model_listed(use: ModelUse, listing: ModelList) -> Check:
    """Whether the endpoint's model list names the model.

    A list that lacks it is a warning, not a failure: llama.cpp's server, for
    one, lists its file but accepts any name. A server that offers no list
    leaves the decision to the completion check.
    """
    model = served_name(use.setting)
    name = f"model listed ({use.setting})"
    if listing.ids is None:
        hint = ""
        if listing.status == 404 and not listing.url.rstrip("/").endswith("/v1/models"):
            hint = "; most servers serve the API under /v1: check that OPENAI_BASE_URL ends in /v1"
        return Check(
            name,
            OK if not hint else WARN,
            f"not checked: the server lists no models (HTTP {listing.status}); the completion "
            f"check decides{hint}",
        )
    if model in listing.ids:
        return Check(name, OK, f"{model!r} is listed by the server")
    shown = ", ".join(listing.ids[:5]) + (
        f" (+{len(listing.ids) - 5} more)" if len(listing.ids) > 5 else ""
    )
    return Check(
        name,
        WARN,
        f"{model!r} is not listed (the server lists: {shown or 'nothing'}); some servers accept "
        "any name, the completion check decides",
    )


def check_completion(use: ModelUse, context: InsituContext) -> Check:
    """Whether the model answers a 1-token request."""
    name = f"completion ({use.setting})"
    started = time.monotonic()
    try:
        reply = aio.run(probe_completion(use.first_role, doctor_settings(context)))
    except ModelEndpointError as exc:
        return Check(name, FAIL, exc.one_line())
    except ConfigurationError as exc:
        return Check(name, FAIL, one_line(str(exc), 500))
    seconds = time.monotonic() - started
    usage = getattr(reply, "usage_metadata", None) or {}
    counted = (
        f"; usage reported ({usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} "
        "out)"
        if usage
        else "; the server reported no token usage"
    )
    return Check(name, OK, f"a 1-token request answered within {seconds:.2f} s{counted}")


def check_tool_calling(use: ModelUse, context: InsituContext) -> Check:
    """Whether the model returns native tool calls, and what the Executor will do about it.

    Only the Executor calls tools: for a model it does not use, the result is
    information only.
    """
    name = f"tool calling ({use.setting})"
    serves_executor = "executor" in use.roles
    mode = context.tool_calling
    if serves_executor and mode == "text":
        return Check(name, OK, "not probed: tool_calling=text, the JSON text protocol is used")
    role = "executor" if serves_executor else use.first_role
    # One tool call needs a few dozen tokens; a model that rambles instead is cut short.
    limit = min(TOOL_CHECK_MAX_TOKENS, context.max_output_tokens_for(role))
    settings = replace(doctor_settings(context), **{f"{role}_max_output_tokens": limit})
    try:
        model = build_chat_model(role, settings)
        native = not needs_bind_tools(model) and aio.run(probe_tool_calling(model, role, settings))
    except ModelEndpointError as exc:
        return Check(name, FAIL, exc.one_line())
    except ConfigurationError as exc:
        return Check(name, FAIL, one_line(str(exc), 500))
    if native:
        return Check(name, OK, f"native tool calls come back (tool_choice={context.tool_choice})")
    found = "no native tool call came back"
    if not serves_executor:
        return Check(name, OK, f"{found}; only the executor calls tools, with another model")
    if mode == "native":
        return Check(
            name,
            FAIL,
            f"{found}, but tool_calling=native: set tool_calling=auto (or text) to use the JSON "
            "text protocol, or serve the model with tool calling enabled",
        )
    return Check(
        name,
        WARN,
        f"{found}: the text protocol will be used (tool_calling=auto); serve the model with "
        "tool calling enabled for native calls",
    )


class JsonCheckReply(BaseModel):
    """The object the JSON check asks for."""

    status: str
    number: int


def check_json_replies(use: ModelUse, context: InsituContext) -> Check:
    """Whether the model replies with a JSON object that parses as the roles' replies do."""
    from insitu.structured import (
        StructuredOutputError,
        is_truncated,
        message_text,
        parse_reply,
    )

    name = f"JSON replies ({use.setting})"
    role = use.first_role
    limit = min(JSON_CHECK_MAX_TOKENS, context.max_output_tokens_for(role))
    settings = replace(doctor_settings(context), **{f"{role}_max_output_tokens": limit})
    messages = [SystemMessage(content=JSON_CHECK_SYSTEM), HumanMessage(content=JSON_CHECK_REQUEST)]
    started = time.monotonic()
    try:
        reply = aio.run(
            call_model(build_chat_model(role, settings), messages, role=role, context=settings)
        )
    except ModelEndpointError as exc:
        return Check(name, FAIL, exc.one_line())
    except ConfigurationError as exc:
        return Check(name, FAIL, one_line(str(exc), 500))
    seconds = time.monotonic() - started
    text = message_text(reply)
    try:
        parsed = parse_reply(text, JsonCheckReply)
    except (StructuredOutputError, ValueError) as exc:
        cut = f" (cut off at {limit} tokens)" if is_truncated(reply) else ""
        return Check(
            name,
            WARN,
            f"the reply{cut} did not parse ({one_line(str(exc), 120).rstrip('.')}); it began "
            f"{one_line(text, 60)!r}: structured replies will need re-asks, or fail",
        )
    exact = parsed.status == "ok" and parsed.number == 7
    return Check(
        name,
        OK,
        f"a JSON object parsed in {seconds:.2f} s"
        + ("" if exact else f", though not the one asked for ({parsed.model_dump()})"),
    )


def model_checks(use: ModelUse, context: InsituContext) -> Iterator[Check]:
    """The checks of one distinct model, in order; later ones are skipped after a dead end.

    A failed endpoint check (unreachable, key refused, provider package
    missing) or a failed 1-token request ends the model's checks: every later
    one would fail the same way, each after a timeout.
    """
    deadline = check_timeout_s(context) + _DEADLINE_GRACE_S
    found: list[tuple[Check, ModelList | None]] = []

    def endpoint() -> list[Check]:
        found.append(check_endpoint(use, context))
        return [found[-1][0]]

    (row,) = bounded(f"endpoint ({use.setting})", endpoint, deadline)
    yield row
    if row.status == FAIL:
        return
    listing = found[0][1] if found else None
    if listing is not None:
        yield check_model_listed(use, listing)
    completion = bounded(
        f"completion ({use.setting})", lambda: [check_completion(use, context)], deadline
    )
    yield from completion
    if any(c.status == FAIL for c in completion):
        return
    yield from bounded(
        f"tool calling ({use.setting})", lambda: [check_tool_calling(use, context)], deadline
    )
    yield from bounded(
        f"JSON replies ({use.setting})", lambda: [check_json_replies(use, context)], deadline
    )


# --------------------------------------------------------------------- sandbox and store


def check_sandbox(context: InsituContext) -> Check:
    """Which sandbox backend a run would use, its isolation level and what it isolates.

    FAIL when no tool would run: ``bwrap`` named but unusable, or ``auto``
    without a working bubblewrap while ``allow_degraded_sandbox`` is off.
    """
    from insitu.sandbox import probe_backend
    from insitu.sandbox.backend import choose_backend

    info = probe_backend()
    wanted = context.sandbox_backend
    choice = choose_backend(wanted, context.allow_degraded_sandbox, info)
    head = f"backend {choice.backend}, isolation {choice.isolation}"
    uid = (
        "; each tool under its own unprivileged uid"
        if info.root
        else "; tools run as the host's user"
    )
    if choice.problem:
        return Check("sandbox", FAIL, f"{head}: {one_line(choice.problem)}")
    if choice.backend == "bwrap":
        detail = f"{head}: bwrap ({info.bwrap_path}) works; {BWRAP_ISOLATION}{uid}"
        return Check("sandbox", OK, detail)
    why = (
        "sandbox_backend=degraded"
        if wanted == "degraded"
        else f"allow_degraded_sandbox, bubblewrap unusable: {one_line(info.bwrap_error, 160)}"
    )
    return Check("sandbox", WARN, f"{head} ({why}); {DEGRADED_ISOLATION}{uid}")


def check_store(context: InsituContext) -> Check:
    """Whether the tool store opens (read-only), how many tools it holds and its integrity.

    A store that does not exist yet is fine: the first run creates it. A path
    that is a file, or a library whose ``tools.db`` is gone, fails with its repair.
    """
    from insitu.tool_store import ToolStore
    from insitu.tool_store.health import StoreStateError, check_location, check_records_present

    path = Path(context.store_dir)
    if context.records_url:
        return check_shared_records(context)
    if not (path / "tools.db").is_file():
        try:
            check_location(path)
            check_records_present(path)
        except StoreStateError as exc:
            return Check("store", FAIL, str(exc))
        return Check("store", OK, f"not created yet: {path} (the first run creates it)")
    try:
        with ToolStore.open(path, read_only=True, chroma_url=context.chroma_url) as store:
            active = store.count("active")
            total = store.count("all")
            integrity = store.db.execute("PRAGMA quick_check").fetchone()[0]
            embedding = store.embedding_name
    except StoreStateError as exc:  # its message is already the one line with the repair
        return Check("store", FAIL, str(exc))
    except Exception as exc:  # any error opening or reading it means the store is unusable
        return Check("store", FAIL, f"{path}: {one_line(f'{type(exc).__name__}: {exc}')}")
    if integrity != "ok":
        from insitu.tool_store.health import records_damaged

        return Check("store", FAIL, str(records_damaged(path / "tools.db", integrity)))
    return Check(
        "store",
        OK,
        f"{path}: {active} active tool(s), {total - active} archived; embedding {embedding}",
    )


def check_shared_records(context: InsituContext) -> Check:
    """Whether a library whose records are on PostgreSQL (``records_url``) opens read-only."""
    from insitu.checkpoints import redact
    from insitu.tool_store import ToolStore

    where = redact(context.records_url or "")
    try:
        with ToolStore.open(
            context.store_dir,
            read_only=True,
            chroma_url=context.chroma_url,
            records_url=context.records_url,
        ) as store:
            active, total = store.count("active"), store.count("all")
            embedding = store.embedding_name
    except Exception as exc:  # any error opening or reading it means the library is unusable
        return Check("store", FAIL, f"{where}: {one_line(f'{type(exc).__name__}: {exc}')}")
    return Check(
        "store",
        OK,
        f"{where}: {active} active tool(s), {total - active} archived; embedding {embedding}",
    )


#: The doctor's row status for each finding of :func:`insitu.tool_store.health.survey`.
_FINDING_STATUS: dict[str | None, Status] = {None: OK, "warn": WARN, "fail": FAIL}


def check_store_parts(context: InsituContext) -> list[Check]:
    """The rest of an existing store, read without writing: access, index, checkpoints, lock.

    Each row that is not ``ok`` says what is wrong and the repair; a store in
    server mode has no local index to check.
    """
    from insitu.tool_store.health import survey

    path = Path(context.store_dir)
    if not (path / "tools.db").is_file():
        return []
    return [
        Check(f"store {finding.part}", _FINDING_STATUS[finding.problem], finding.detail)
        for finding in survey(path)
        if not (context.chroma_url and finding.part == "index")
    ]


def check_shared_services(context: InsituContext) -> list[Check]:
    """The shared services the settings point to answer: a Chroma server, PostgreSQL checkpoints.

    Nothing is written: Chroma is asked for its heartbeat, PostgreSQL for ``SELECT 1``.
    """
    rows = []
    timeout = check_timeout_s(context)
    if context.chroma_url:
        import httpx

        url = context.chroma_url.rstrip("/") + "/api/v2/heartbeat"
        try:
            httpx.get(url, timeout=timeout).raise_for_status()
            rows.append(Check("chroma server", OK, f"{context.chroma_url} answers"))
        except Exception as exc:
            rows.append(
                Check(
                    "chroma server",
                    FAIL,
                    f"{context.chroma_url}: {one_line(str(exc) or type(exc).__name__)}; start it "
                    "(`chroma run --path DIR --port PORT`) or fix chroma_url",
                )
            )
    if context.checkpoint_url:
        from insitu.checkpoints import redact

        shown = redact(context.checkpoint_url)
        try:
            import psycopg

            with psycopg.connect(
                context.checkpoint_url, connect_timeout=max(1, int(timeout))
            ) as conn:
                conn.execute("SELECT 1")
            rows.append(Check("checkpoints database", OK, f"{shown} answers"))
        except Exception as exc:
            rows.append(
                Check(
                    "checkpoints database",
                    FAIL,
                    f"{shown}: {one_line(str(exc) or type(exc).__name__)}; start PostgreSQL or "
                    "fix checkpoint_url",
                )
            )
    return rows


# --------------------------------------------------------------------- all checks


def iter_checks(
    context: InsituContext, *, models: bool = True, sandbox: bool = True, store: bool = True
) -> Iterator[Check]:
    """Run the checks for ``context``, yielding each row as soon as it is known.

    Args:
        context: The settings to check (every distinct role model, the sandbox
            backend, the store directory).
        models: Check the models.
        sandbox: Check the sandbox backend.
        store: Check the store.
    """
    if models:
        for use in distinct_models(context):
            yield from model_checks(use, context)
    if sandbox:
        yield from bounded("sandbox", lambda: [check_sandbox(context)], CHECK_TIMEOUT_CAP_S)
    if store:

        def store_rows() -> list[Check]:
            return [
                check_store(context),
                *check_store_parts(context),
                *check_shared_services(context),
            ]

        yield from bounded("store", store_rows, CHECK_TIMEOUT_CAP_S)


def run_checks(context: InsituContext, **which: bool) -> list[Check]:
    """Every row of :func:`iter_checks`, as a list."""
    return list(iter_checks(context, **which))


def has_failures(checks: list[Check]) -> bool:
    """Whether any row FAILed (a run would fail)."""
    return any(check.status == FAIL for check in checks)
