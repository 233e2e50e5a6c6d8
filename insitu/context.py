"""Run-time configuration: the one ``context_schema`` of insitu's graphs.

Every setting is a field of :class:`InsituContext` with a description (LangGraph
Studio shows them) and a default that may come from an environment variable.
The CLI, the Python API and Studio all build the same object; nothing else
reads configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

ROLES = ("manager", "tool_developer", "executor", "integrator", "reflection", "absorber")
DEFAULT_MODEL = "gpt-4o-mini"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _model_default(role: str) -> Any:
    env_name = f"INSITU_{role.upper()}_MODEL"
    return field(
        default_factory=lambda: _env(env_name) or _env("INSITU_MODEL") or DEFAULT_MODEL,
        metadata={
            "description": f"Chat model name for the {role.replace('_', ' ')} role "
            f"(env {env_name}, else INSITU_MODEL, else {DEFAULT_MODEL})."
        },
    )


def _describe(description: str, default: Any = None, *, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"description": description})
    return field(default=default, metadata={"description": description})


@dataclass(kw_only=True)
class InsituContext:
    """Configuration of an insitu run (models, store, sandbox, limits)."""

    manager_model: str = _model_default("manager")
    tool_developer_model: str = _model_default("tool_developer")
    executor_model: str = _model_default("executor")
    integrator_model: str = _model_default("integrator")
    reflection_model: str = _model_default("reflection")
    absorber_model: str = _model_default("absorber")
    temperature: float = _describe("Sampling temperature for every role.", 0.0)
    openai_base_url: str | None = _describe(
        "OpenAI-compatible endpoint (env OPENAI_BASE_URL); the key comes from OPENAI_API_KEY.",
        factory=lambda: _env("OPENAI_BASE_URL"),
    )
    request_timeout_s: float = _describe(
        "Timeout of one model request (one HTTP attempt), in seconds.", 120.0
    )
    max_retries: int = _describe(
        "Retries of a model request after a transient endpoint error (connection refused or "
        "reset, timeout, HTTP 429 or 5xx), with exponential backoff that honours Retry-After.",
        4,
    )
    retry_budget_s: float = _describe(
        "Total time one model call may take, its retries and their waits included, in seconds.",
        300.0,
    )
    manager_max_output_tokens: int = _describe(
        "Most tokens the manager's model may generate per reply (sent as max_tokens).", 1024
    )
    tool_developer_max_output_tokens: int = _describe(
        "Most tokens the tool developer's model may generate per reply (a module and its tests).",
        4096,
    )
    executor_max_output_tokens: int = _describe(
        "Most tokens the executor's model may generate per reply.", 1024
    )
    integrator_max_output_tokens: int = _describe(
        "Most tokens the integrator's model may generate per reply.", 1024
    )
    reflection_max_output_tokens: int = _describe(
        "Most tokens the reflection model may generate per reply (it also repairs tools).", 4096
    )
    absorber_max_output_tokens: int = _describe(
        "Most tokens the absorber's model may generate per reply (it also writes merged tools).",
        4096,
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
    )

    store_dir: str = _describe(
        "Tool library directory (env INSITU_STORE).",
        factory=lambda: _env("INSITU_STORE", ".insitu"),
    )
    chroma_url: str | None = _describe(
        "Chroma server URL for a shared index (server mode); local index when empty.",
        factory=lambda: _env("INSITU_CHROMA_URL"),
    )
    embedding: Literal["minilm", "hashing"] = _describe(
        "Embedding model for retrieval: the bundled MiniLM, or 'hashing' (tests only).",
        factory=lambda: _env("INSITU_EMBEDDING", "minilm"),
    )
    retrieval_k: int = _describe("Candidate tools the Manager retrieves per task.", 8)

    sandbox_backend: Literal["auto", "bwrap", "degraded"] = _describe(
        "Sandbox backend: bubblewrap isolation, or the degraded rlimits-only process.",
        factory=lambda: _env("INSITU_SANDBOX_BACKEND", "auto"),
    )
    tool_timeout_s: float = _describe("Wall-clock limit of one tool call, in seconds.", 20.0)
    tool_memory_mb: int = _describe("Address-space limit of one tool call, in MiB.", 1024)
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
    )
    max_react_steps: int = _describe("Model calls the Executor may make per round.", 12)
    max_build_attempts: int = _describe(
        "Attempts the ToolDeveloper gets to make one tool pass its tests.", 3
    )
    max_repairs: int = _describe("Tool repairs the Executor may request per task.", 2)
    max_reasks: int = _describe("Re-asks after an unusable structured reply, per model call.", 2)
    max_tool_output_chars: int = _describe(
        "Characters of a tool's output shown to the Executor (the rest is truncated).", 4000
    )
    max_new_tools_per_round: int = _describe("New tools the Manager may request per round.", 3)
    freeze_library: bool = _describe(
        "Evaluate a snapshot: no new tools, no repairs, nothing written to the library.", False
    )
    keep_new_tools: bool = _describe(
        "Keep the tools an episode builds (False: they are built and used, then dropped — the "
        "no-reuse baseline).",
        True,
    )
    commit_mode: Literal["store", "defer"] = _describe(
        "'store': reflection commits new tools to the library; 'defer': they are returned "
        "for the batch graph to absorb.",
        "store",
    )

    batch_concurrency: int = _describe(
        "Episodes of a batch run at the same time (the batch graph's Send fan-out).", 16
    )
    episode_timeout_s: float = _describe(
        "Wall-clock limit of one episode inside a batch; a late episode counts as failed.", 1800.0
    )
    absorb_threshold: float | None = _describe(
        "Similarity from which two tools are proposed to the absorber as possible duplicates "
        "(None: the clustering benchmark's default).",
        None,
    )

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

        Unknown keys are rejected with the list of known ones.
        """
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        known = {f.name for f in fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise ValueError(
                f"unknown setting(s) {sorted(unknown)}; known settings: {', '.join(sorted(known))}"
            )
        return cls(**value)


def describe_settings() -> list[tuple[str, str, str]]:
    """Return (name, default, description) for every setting, for docs and the CLI."""
    instance = InsituContext()
    return [
        (f.name, repr(getattr(instance, f.name)), f.metadata.get("description", ""))
        for f in fields(InsituContext)
    ]
