"""Run-time configuration: the one ``context_schema`` of insitu's graphs.

Every setting is a field of :class:`InsituContext` with a description (LangGraph
Studio shows them), a default, and an environment variable: ``INSITU_`` and the
field's name in capitals (``INSITU_MAX_ROUNDS=5``), plus a few older aliases
(:data:`ENV_ALIASES`, and ``INSITU_MODEL`` for every role's model). Values from
the environment, a dict or text are converted by the field's type and checked
against its range (:func:`parse_setting`). The CLI, the Python API and Studio
all build the same object; nothing else reads configuration
(:mod:`insitu.settings_sources` adds the CLI's config file and ``--set``).
"""

from __future__ import annotations

import math
import os
import re
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from typing import Any, Literal

#: Where an episode's new tools go: into the library ('store'), or back to a batch ('defer').
CommitMode = Literal["store", "defer"]
ROLES = ("manager", "tool_developer", "executor", "integrator", "reflection", "absorber")
DEFAULT_MODEL = "gpt-4o-mini"

#: The prefix of every setting's environment variable: ``INSITU_<FIELD NAME IN CAPITALS>``.
ENV_PREFIX = "INSITU_"
#: Older names that keep working (the ``INSITU_<FIELD>`` variable wins when both are set).
ENV_ALIASES = {"store_dir": "INSITU_STORE", "openai_base_url": "OPENAI_BASE_URL"}
#: The model of every role whose own ``INSITU_<ROLE>_MODEL`` is unset.
ENV_EVERY_MODEL = "INSITU_MODEL"

_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})
_NONE_WORDS = frozenset({"", "none"})


class SettingError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message names its source."""


def env_name(name: str) -> str:
    """The environment variable of setting ``name`` (``max_rounds`` -> ``INSITU_MAX_ROUNDS``)."""
    return ENV_PREFIX + name.upper()


def _model_default(role: str) -> Any:
    env_var = env_name(f"{role}_model")
    return field(
        default=DEFAULT_MODEL,
        metadata={
            "description": f"Chat model name for the {role.replace('_', ' ')} role "
            f"(env {env_var}, else {ENV_EVERY_MODEL}, else {DEFAULT_MODEL})."
        },
    )


def _describe(
    description: str,
    default: Any = None,
    *,
    factory: Any = None,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
) -> Any:
    """Declare a setting: its description, default and, for numbers, its allowed range.

    Args:
        description: What the setting does (shown by Studio, the docs and the CLI).
        default: The default value (``factory`` instead for a mutable one).
        factory: Builds the default value.
        minimum: The smallest allowed value.
        maximum: The largest allowed value.
        above: A bound the value must exceed (a duration must be more than 0).
    """
    metadata = {"description": description, "minimum": minimum, "maximum": maximum, "above": above}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# init=False: the __init__ below fills what is not given from the environment, which a
# generated __init__ cannot tell apart from an explicit argument.
@dataclass(init=False)
class InsituContext:
    """Configuration of an insitu run (models, store, sandbox, limits)."""

    manager_model: str = _model_default("manager")
    tool_developer_model: str = _model_default("tool_developer")
    executor_model: str = _model_default("executor")
    integrator_model: str = _model_default("integrator")
    reflection_model: str = _model_default("reflection")
    absorber_model: str = _model_default("absorber")
    temperature: float = _describe("Sampling temperature for every role.", 0.0, minimum=0)
    openai_base_url: str | None = _describe(
        "OpenAI-compatible endpoint (env INSITU_OPENAI_BASE_URL or OPENAI_BASE_URL); the key "
        "comes from OPENAI_API_KEY.",
        None,
    )
    request_timeout_s: float = _describe(
        "Timeout of one model request (one HTTP attempt), in seconds.", 120.0, above=0
    )
    max_retries: int = _describe(
        "Retries of a model request after a transient endpoint error (connection refused or "
        "reset, timeout, HTTP 429 or 5xx), with exponential backoff that honours Retry-After.",
        4,
        minimum=0,
    )
    retry_budget_s: float = _describe(
        "Total time one model call may take, its retries and their waits included, in seconds.",
        300.0,
        above=0,
    )
    manager_max_output_tokens: int = _describe(
        "Most tokens the manager's model may generate per reply (sent as max_tokens).",
        1024,
        minimum=1,
    )
    tool_developer_max_output_tokens: int = _describe(
        "Most tokens the tool developer's model may generate per reply (a module and its tests).",
        4096,
        minimum=1,
    )
    executor_max_output_tokens: int = _describe(
        "Most tokens the executor's model may generate per reply.", 1024, minimum=1
    )
    integrator_max_output_tokens: int = _describe(
        "Most tokens the integrator's model may generate per reply.", 1024, minimum=1
    )
    reflection_max_output_tokens: int = _describe(
        "Most tokens the reflection model may generate per reply (it also repairs tools).",
        4096,
        minimum=1,
    )
    absorber_max_output_tokens: int = _describe(
        "Most tokens the absorber's model may generate per reply (it also writes merged tools).",
        4096,
        minimum=1,
    )
    tool_calling: Literal["auto", "native", "text"] = _describe(
        "How the Executor calls tools: 'native' (the endpoint's tool calling), 'text' (a JSON "
        "action in the reply, for servers without tool calling), or 'auto' (decided by a probe "
        "of the endpoint; models passed from Python are taken as native).",
        "auto",
    )
    tool_choice: Literal["auto", "required"] = _describe(
        "The tool_choice sent with every native tool-calling request (some servers read a "
        "missing one as 'none').",
        "auto",
    )
    preflight: bool = _describe(
        "Before a run, send one cheap request per configured model and refuse to start on a "
        "dead endpoint.",
        True,
    )
    max_consecutive_endpoint_failures: int = _describe(
        "A run (evolve, eval) stops after this many tasks in a row failed on model endpoint "
        "errors; its tasks are retried when the run is resumed.",
        3,
        minimum=1,
    )

    store_dir: str = _describe(
        "Tool library directory (env INSITU_STORE_DIR or INSITU_STORE).", ".insitu"
    )
    chroma_url: str | None = _describe(
        "Chroma server URL for a shared index (server mode); local index when empty.", None
    )
    records_url: str | None = _describe(
        "Where the tool library's records live: empty for tools.db in the store directory; a "
        "postgresql://user:password@host:port/database URL for a PostgreSQL database that "
        "processes on several machines share (one library per database; needs chroma_url and "
        "the scale extra). store_dir stays a local directory for workspaces and the tool "
        "environment.",
        None,
    )
    checkpoint_url: str | None = _describe(
        "Where runs keep their LangGraph checkpoints: empty for the SQLite file "
        "checkpoints.sqlite in the store directory (insitu run) or run directory (insitu "
        "evolve, eval); a postgresql://user:password@host:port/database URL for a PostgreSQL "
        "database shared by several machines (one schema per directory; needs the scale "
        "extra). Resume with the same directory path.",
        None,
    )
    embedding: Literal["minilm", "hashing"] = _describe(
        "Embedding model for retrieval: the bundled MiniLM, or 'hashing' (tests only).", "minilm"
    )
    retrieval_k: int = _describe("Candidate tools the Manager retrieves per task.", 8, minimum=1)
    experiences_top_k: int = _describe(
        "Experiences of similar earlier tasks shown to the Manager next to its candidate tools "
        "(0: none; see docs/learning.md).",
        3,
        minimum=0,
    )
    experiences_max_chars: int = _describe(
        "Most characters the experiences may take in the Manager's prompt, heading included; "
        "longer ones are cut to fit.",
        1200,
        minimum=0,
    )
    reuse_plan_min_similarity: float | None = _describe(
        "A task this similar (cosine of the task texts) to one solved before reuses that "
        "episode's plan in its first round: its tools are bound and its guidance given without "
        "asking the Manager, and reflection writes no new note for a clean success "
        "(None: always ask the Manager).",
        0.9,
        minimum=-1.0,
        maximum=1.0,
    )
    usage_notes_max_chars: int = _describe(
        "Longest usage note (how to call a tool, distilled by reflection from its calls) kept "
        "per tool version and shown to the Executor (0: no notes are distilled).",
        600,
        minimum=0,
    )
    harvested_cases_per_tool: int = _describe(
        "Successful calls kept per tool as regression cases that its repairs and merges must "
        "reproduce (0: none are harvested).",
        5,
        minimum=0,
    )

    sandbox_backend: Literal["auto", "bwrap", "degraded"] = _describe(
        "Sandbox backend: bubblewrap isolation, or the degraded rlimits-only process. 'auto' "
        "uses bubblewrap and refuses to run tools where it does not work, unless "
        "allow_degraded_sandbox is set; 'degraded' chooses the weaker sandbox explicitly.",
        "auto",
    )
    allow_degraded_sandbox: bool = _describe(
        "With sandbox_backend=auto and no working bubblewrap, run generated tools in the degraded "
        "sandbox (rlimits and a separate uid, no filesystem or network isolation) instead of "
        "refusing to.",
        False,
    )
    network_allow: list[str] | None = _describe(
        "If set, the only hosts (names or IPv4 addresses) that tools declaring network may "
        "reach; private ranges and the host's own addresses are never reachable either way.",
        None,
    )
    shared_host_network: bool = _describe(
        "Give tools that declare network the host's own network (its loopback services and "
        "private networks included) instead of a namespace of their own. Unsafe with "
        "LLM-written tools; for a trusted library that must reach local services.",
        False,
    )
    allowed_secrets: list[str] = _describe(
        "Environment variables that tools may declare as secrets and receive at call time; a "
        "tool declaring any other is refused. Model provider keys and INSITU_* variables reach "
        "a tool only when named here. A tool's own tests only ever see placeholder values.",
        factory=list,
    )
    tool_timeout_s: float = _describe(
        "Wall-clock limit of one tool call, in seconds.", 20.0, above=0
    )
    tool_memory_mb: int = _describe(
        "Address-space limit of one tool call, in MiB.", 1024, minimum=1
    )
    install_dependencies: bool = _describe(
        "Install a tool's missing PyPI dependencies into the store's tool environment.", True
    )
    denied_packages: list[str] = _describe(
        "PyPI packages a tool may never depend on.", factory=list
    )
    allowed_packages: list[str] | None = _describe(
        "If set, the only PyPI packages a tool may depend on.", None
    )

    max_rounds: int = _describe(
        "Manager planning rounds per task (re-plans after a missing capability or a failed build).",
        3,
        minimum=1,
    )
    max_react_steps: int = _describe("Model calls the Executor may make per round.", 12, minimum=1)
    max_build_attempts: int = _describe(
        "Attempts the ToolDeveloper gets to make one tool pass its tests.", 3, minimum=1
    )
    max_repairs: int = _describe("Tool repairs the Executor may request per task.", 2, minimum=0)
    max_reasks: int = _describe(
        "Re-asks after an unusable structured reply, per model call.", 2, minimum=0
    )
    max_tool_output_chars: int = _describe(
        "Characters of a tool's output shown to the Executor (the rest is truncated).",
        4000,
        minimum=1,
    )
    max_new_tools_per_round: int = _describe(
        "New tools the Manager may request per round.", 3, minimum=0
    )
    freeze_library: bool = _describe(
        "Evaluate a snapshot: no new tools, no repairs, nothing written to the library.", False
    )
    keep_new_tools: bool = _describe(
        "Keep the tools an episode builds (False: they are built and used, then dropped — the "
        "no-reuse baseline).",
        True,
    )
    commit_mode: CommitMode = _describe(
        "'store': reflection commits new tools to the library; 'defer': they are returned "
        "for the batch graph to absorb.",
        "store",
    )
    pause_before: list[str] = _describe(
        "Episode steps to pause before (a LangGraph interrupt), e.g. ['execute_task']: inspect "
        "or edit the state, then resume. Steps: plan_task, build_tools, execute_task, "
        "write_answer. In a batch this needs the episodes' checkpoints (episode_checkpoints; "
        "the batch graph served to Studio keeps them).",
        factory=list,
    )
    tool_approval: Literal["none", "new", "all"] = _describe(
        "Human approval before tools enter the library: 'none'; 'new' (new tools); 'all' (new "
        "tools, repairs and merges). The run pauses (a LangGraph interrupt) until each is "
        "approved, rejected or edited.",
        "none",
    )

    batch_concurrency: int = _describe(
        "Episodes of a batch that run at the same time (asyncio tasks of one process; the "
        "batch graph sends its tasks in waves of this size).",
        16,
        minimum=1,
    )
    blocking_threads: int = _describe(
        "Threads for the episodes' blocking work (sandboxed tool calls, store queries and "
        "commits, admission tests), shared by every episode of the process; model requests "
        "need none.",
        32,
        minimum=1,
    )
    episode_timeout_s: float = _describe(
        "Wall-clock limit of one episode. In a batch the episode is cancelled at it (its model "
        "request aborted, its tools discarded) and ends failed (error_kind 'timeout'); a single "
        "task (insitu run) is stopped by its roles at their next step after it.",
        1800.0,
        above=0,
    )
    episode_checkpoints: bool = _describe(
        "insitu evolve: each episode of a batch checkpoints its own steps (a task can be "
        "inspected, forked and resumed mid-way; costs CPU per step). Without, an interrupted "
        "batch re-runs its unfinished episodes. The batch graph served to Studio keeps them.",
        False,
    )
    absorb_threshold: float | None = _describe(
        "Similarity from which two tools are proposed to the absorber as possible duplicates "
        "(None: the clustering benchmark's default).",
        None,
        minimum=-1.0,
        maximum=1.0,
    )

    utility_half_life_days: float = _describe(
        "Days without use after which a tool's utility score halves (its recency; see "
        "docs/library.md).",
        30.0,
        above=0,
    )
    prune_min_utility: float | None = _describe(
        "After each batch, archive the tools whose utility score is below this (never locked "
        "ones, nor those the batch added or changed); None: never automatically (`insitu tools "
        "prune` still can).",
        None,
        minimum=0,
    )
    prune_grace_days: float = _describe(
        "Tools whose first version is younger than this many days are never pruned.",
        7.0,
        minimum=0,
    )
    revive_archived: bool = _describe(
        "When the Manager's retrieval ranks a pruned (archived for low utility) tool first for "
        "a task, restore it to the library instead of building it again.",
        True,
    )
    revive_min_similarity: float = _describe(
        "The least cosine similarity between a task and a pruned tool for the tool to be "
        "revived (see revive_archived).",
        0.5,
        minimum=-1.0,
        maximum=1.0,
    )
    retention_days: float = _describe(
        "insitu gc: workspaces and checkpoint threads idle for longer than this many days are "
        "removed (never those of unfinished runs or paused threads).",
        30.0,
        minimum=0,
    )

    def __init__(self, **values: Any) -> None:
        """Take the given settings, every other one from the environment, else its default.

        Given values may be text (parsed by the setting's type). A missing one
        comes from its environment variable (``INSITU_<NAME>``, then its alias),
        else its default. ``dataclasses.replace`` gives every field, so a copy
        never re-reads the environment.

        Raises:
            SettingError: An unknown name, or a value of the wrong type or out of range.
        """
        unknown = sorted(set(values) - set(SETTING_NAMES))
        if unknown:
            raise SettingError(
                f"unknown setting(s) {unknown}; known settings: {', '.join(sorted(SETTING_NAMES))}"
            )
        from_env = environment_settings([name for name in SETTING_NAMES if name not in values])
        for name in SETTING_NAMES:
            if name in values:
                value = parse_setting(name, values[name])
            elif name in from_env:
                value = from_env[name][0]
            else:
                value = default_value(name)
            setattr(self, name, value)

    def model_for(self, role: str) -> str:
        """Return the model name configured for a role (one of ``ROLES``)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        return getattr(self, f"{role}_model")

    def max_output_tokens_for(self, role: str) -> int:
        """Return the most tokens a role's model may generate per reply."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        return getattr(self, f"{role}_max_output_tokens")

    def with_model(self, name: str) -> InsituContext:
        """Return a copy that uses model ``name`` for every role."""
        return replace(self, **{f"{role}_model": name for role in ROLES})

    @classmethod
    def coerce(cls, value: InsituContext | dict[str, Any] | None) -> InsituContext:
        """Build a context from ``None`` (defaults), a dict (Studio, JSON) or itself.

        Unknown keys are rejected with the list of known ones; text values are
        parsed by the setting's type (``{"max_rounds": "5"}``).
        """
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return cls(**value)


_FIELDS: dict[str, Field[Any]] = {f.name: f for f in fields(InsituContext)}
#: Every setting's name, in declaration order.
SETTING_NAMES: tuple[str, ...] = tuple(_FIELDS)


def _shape(annotation: Any) -> tuple[Any, bool]:
    """(base, optional) of a field type; base is bool, int, float, str, list or Literal choices."""
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        (inner,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _shape(inner)[0], True
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation), False
    if typing.get_origin(annotation) is list:
        return list, False
    return annotation, False


_SHAPES = {
    name: _shape(hint)
    for name, hint in typing.get_type_hints(InsituContext).items()
    if name in _FIELDS
}
_EXPECTED = {
    bool: "true or false (also yes/no, 1/0)",
    int: "an integer",
    float: "a number",
    str: "a non-empty string",
    list: "a comma-separated list of names",
}


class _Invalid(Exception):
    """A value that the setting's type cannot take."""


def _convert(value: Any, base: Any, optional: bool) -> Any:
    """Convert text, or check a typed value, for a setting of type (``base``, ``optional``)."""
    if isinstance(value, str):
        text = value.strip()
        if optional and text.lower() in _NONE_WORDS:
            return None
        if base is list:
            return [part.strip() for part in text.split(",") if part.strip()]
        if base is bool and text.lower() in _TRUE_WORDS | _FALSE_WORDS:
            return text.lower() in _TRUE_WORDS
        if base is int and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        if base is float:
            try:
                number = float(text)
            except ValueError:
                raise _Invalid from None
            return _convert(number, base, optional)
        if (base is str and text) or (isinstance(base, tuple) and text in base):
            return text
        raise _Invalid
    if value is None and optional:
        return None
    if base is bool and isinstance(value, bool):
        return value
    if isinstance(value, bool):  # an int to Python, but never a count or a number here
        raise _Invalid
    if base is int and isinstance(value, int):
        return value
    if base is float and isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if base is list and isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _Invalid


def _range_problem(name: str, value: Any) -> str | None:
    """What is wrong with a number's range, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    meta = _FIELDS[name].metadata
    if meta.get("minimum") is not None and value < meta["minimum"]:
        return f"must be at least {meta['minimum']}"
    if meta.get("maximum") is not None and value > meta["maximum"]:
        return f"must be at most {meta['maximum']}"
    if meta.get("above") is not None and value <= meta["above"]:
        return f"must be more than {meta['above']}"
    return None


def parse_setting(name: str, value: Any, *, source: str | None = None) -> Any:
    """Convert ``value`` to setting ``name``'s type and check its range.

    Text (from the environment, ``--set``, a config file or JSON) is parsed by
    the field's type: integers, numbers, booleans (true/false, yes/no, 1/0,
    on/off), one of a ``Literal``'s choices, comma-separated lists, and for a
    setting that may be ``None`` an empty value or ``none``. Any other value
    must already have the setting's type (an integer is taken for a number).

    Args:
        name: A field of :class:`InsituContext`.
        value: Text, or a value of the setting's type.
        source: What to name in an error (an environment variable, ``--set``
            ...); default: the setting's name.

    Returns:
        The value, of the setting's type.

    Raises:
        SettingError: An unknown setting, or a value of the wrong type or out of
            range; the message names ``source``, the value and what is expected.
    """
    if name not in _SHAPES:
        raise SettingError(
            f"unknown setting {name!r}; known settings: {', '.join(sorted(SETTING_NAMES))}"
        )
    base, optional = _SHAPES[name]
    label = source or name
    try:
        converted = _convert(value, base, optional)
    except _Invalid:
        expected = (
            "one of " + ", ".join(map(repr, base)) if isinstance(base, tuple) else _EXPECTED[base]
        )
        raise SettingError(
            f"{label}={value!r}: expected {expected}{' or none' if optional else ''}"
        ) from None
    problem = _range_problem(name, converted)
    if problem:
        raise SettingError(f"{label}={value!r}: {problem}")
    return converted


def env_variables(name: str) -> list[str]:
    """The environment variables that set ``name``, the first set one winning."""
    variables = [env_name(name)]
    if name in ENV_ALIASES:
        variables.append(ENV_ALIASES[name])
    if name.removesuffix("_model") in ROLES:
        variables.append(ENV_EVERY_MODEL)
    return variables


def environment_settings(names: typing.Iterable[str] | None = None) -> dict[str, tuple[Any, str]]:
    """Read settings from the environment.

    An empty variable means ``None`` for a setting that may be ``None`` and an
    empty list for a list; for any other setting it counts as unset.

    Args:
        names: The settings to read (default: every one).

    Returns:
        For each setting set in the environment, its value and the variable it came from.

    Raises:
        SettingError: A variable's value does not fit its setting.
    """
    found: dict[str, tuple[Any, str]] = {}
    for name in SETTING_NAMES if names is None else names:
        base, optional = _SHAPES[name]
        for variable in env_variables(name):
            text = os.environ.get(variable)
            if text is None or (text.strip() == "" and not optional and base is not list):
                continue
            found[name] = (parse_setting(name, text, source=variable), variable)
            break
    return found


def default_value(name: str) -> Any:
    """The declared default of setting ``name`` (what no environment variable changed)."""
    declared = _FIELDS[name]
    if declared.default_factory is not MISSING:
        return declared.default_factory()
    return declared.default


def describe_settings() -> list[tuple[str, str, str]]:
    """Return (name, default, description) for every setting, for docs and the CLI."""
    return [
        (name, repr(default_value(name)), declared.metadata.get("description", ""))
        for name, declared in _FIELDS.items()
    ]
