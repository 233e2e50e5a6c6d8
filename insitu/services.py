"""The live objects a run needs: chat models, the tool store and the sandbox.

Graph state holds only data; nodes obtain live objects from a :class:`Services`
bound into the graph by its factory. Anything injected from Python (a chat
model, an open store, a sandbox) is used as is; anything missing is built from
the :class:`~insitu.context.InsituContext` and cached per process, so that one
process holds one writer on a store directory and one warm sandbox pool.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from insitu.context import ROLES, InsituContext
from insitu.llm import ConfigurationError, build_chat_model

__all__ = ["NO_ENDPOINT_MESSAGE", "ConfigurationError", "Services", "open_sandbox", "open_store"]

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from insitu.sandbox import Sandbox
    from insitu.tool_store import ToolStore


def no_endpoint_message(
    alternative: str = "pass chat models from Python (run_task(..., models=my_model)); "
    "`insitu demo` runs offline with a scripted model",
) -> str:
    """The message for a run that has no model endpoint.

    Args:
        alternative: How to run without an endpoint where the run was started
            (the CLI names its command's ``--scripted``).
    """
    return (
        "No model endpoint is configured. Set OPENAI_API_KEY (and OPENAI_BASE_URL for any other "
        "OpenAI-compatible server, e.g. http://localhost:11434/v1 for Ollama or "
        f"http://localhost:8000/v1 for vLLM / llama.cpp), or {alternative}."
    )


NO_ENDPOINT_MESSAGE = no_endpoint_message()

_lock = threading.Lock()
_stores: dict[tuple[str, str | None, str], ToolStore] = {}
_sandboxes: dict[tuple[Any, ...], Sandbox] = {}


def check_model_configuration(context: InsituContext) -> None:
    """Fail at once, with what to set, when a role's model cannot be reached at all.

    A bare model name needs ``OPENAI_API_KEY`` or an endpoint URL; a
    ``provider:model`` setting brings its own client (and key variable).

    Raises:
        ConfigurationError: See :data:`NO_ENDPOINT_MESSAGE`.
    """
    from insitu.llm import provider_of

    bare = [role for role in ROLES if provider_of(context.model_for(role)) in (None, "openai")]
    if bare and not os.environ.get("OPENAI_API_KEY") and not context.openai_base_url:
        raise ConfigurationError(NO_ENDPOINT_MESSAGE)


def open_store(context: InsituContext) -> ToolStore:
    """Return this process's store for the context's directory, opening it once.

    Args:
        context: Supplies the store directory, Chroma URL, records URL and embedding.

    Returns:
        The open store (shared by every graph in the process).
    """
    from insitu.tool_store import ToolStore

    key = (
        str(Path(context.store_dir).resolve()),
        context.chroma_url,
        context.records_url,
        context.embedding,
    )
    with _lock:
        store = _stores.get(key)
        if store is None or getattr(store, "closed", False):
            store = ToolStore.open(
                Path(context.store_dir),
                embedding=context.embedding,
                chroma_url=context.chroma_url,
                records_url=context.records_url,
            )
            _stores[key] = store
        return store


def open_sandbox(context: InsituContext) -> Sandbox:
    """Return this process's sandbox for the context's settings, creating it once.

    The sandbox's tool environment (a venv for tools' dependencies) lives in the
    store directory, and the sandbox follows the context's ``allowed_secrets``.

    Raises:
        ConfigurationError: No working bubblewrap while ``sandbox_backend`` is
            ``bwrap``, or ``auto`` with ``allow_degraded_sandbox`` off (the
            message says what to install or set); or ``allowed_secrets`` names
            an unusable variable.
    """
    from insitu.sandbox import Sandbox, SandboxSettings, ToolEnvironment, probe_backend
    from insitu.sandbox.backend import choose_backend
    from insitu.tool_store.admission import SecretPolicyError, set_secret_policy

    choice = choose_backend(
        context.sandbox_backend, context.allow_degraded_sandbox, probe_backend()
    )
    if choice.problem:  # no tool could run (or only with weaker isolation than allowed)
        raise ConfigurationError(choice.problem)
    key = (
        str(Path(context.store_dir).resolve()),
        context.sandbox_backend,
        tuple(sorted(set(context.allowed_secrets))),
        context.tool_timeout_s,
        context.tool_memory_mb,
        context.install_dependencies,
        tuple(context.denied_packages),
        tuple(context.allowed_packages) if context.allowed_packages is not None else None,
        tuple(context.network_allow) if context.network_allow is not None else None,
        context.shared_host_network,
        context.batch_concurrency,
    )
    with _lock:
        sandbox = _sandboxes.get(key)
        if sandbox is None:
            toolenv = ToolEnvironment(
                Path(context.store_dir) / "toolenv",
                allow=context.allowed_packages,
                deny=list(context.denied_packages),
                installer_enabled=context.install_dependencies,
            )
            settings = SandboxSettings(
                backend=context.sandbox_backend,
                timeout_s=context.tool_timeout_s,
                memory_mb=context.tool_memory_mb,
                # A warm worker serves one working directory: room for every episode
                # of a batch, its tool builds, and a few to spare.
                max_workers=max(8, 2 * context.batch_concurrency + 4),
                # Episode workdirs live here: warm workers are shared across episodes,
                # each call confined to its own workdir (when Landlock is available).
                workspace_root=str(Path(context.store_dir).resolve() / "workspaces"),
                network_allow=context.network_allow,
                shared_host_network=context.shared_host_network,
            )
            sandbox = Sandbox(settings, toolenv=toolenv)
            try:
                set_secret_policy(sandbox, context.allowed_secrets)
            except SecretPolicyError as exc:
                sandbox.close()
                raise ConfigurationError(str(exc)) from None
            _sandboxes[key] = sandbox
        return sandbox


class Services:
    """Live objects for the nodes of one graph: injected ones, else defaults.

    Args:
        models: One chat model for every role, or a mapping role -> model
            (missing roles fall back to ``"default"`` in the mapping, then to
            the model the context names, see :func:`insitu.llm.build_chat_model`).
        tool_store: An open ``ToolStore`` to use instead of opening ``store_dir``.
        sandbox: A ``Sandbox`` to use instead of the per-process default.
    """

    def __init__(
        self,
        *,
        models: BaseChatModel | Mapping[str, BaseChatModel] | None = None,
        tool_store: ToolStore | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        if isinstance(models, Mapping):
            unknown = set(models) - set(ROLES) - {"default"}
            if unknown:
                raise ValueError(
                    f"unknown role(s) {sorted(unknown)} in models; roles are "
                    f"{', '.join(ROLES)} (or 'default')"
                )
        self._models = models
        self._store = tool_store
        self._sandbox = sandbox

    def chat_model(self, role: str, context: InsituContext) -> BaseChatModel:
        """Return the chat model for ``role``."""
        if isinstance(self._models, Mapping):
            model = self._models.get(role) or self._models.get("default")
            if model is not None:
                return model
        elif self._models is not None:
            return self._models
        return build_chat_model(role, context)

    def injected(self, role: str) -> bool:
        """Whether ``role``'s model was passed from Python (not built from the settings)."""
        if isinstance(self._models, Mapping):
            return (self._models.get(role) or self._models.get("default")) is not None
        return self._models is not None

    def check_models(self, context: InsituContext) -> None:
        """Fail before a run when the executor's model cannot call tools as configured.

        Raises:
            ConfigurationError: A sentence saying which model and what to do.
        """
        if context.tool_calling == "text" or not self.injected("executor"):
            return
        from insitu.llm import require_tool_calling

        require_tool_calling(self.chat_model("executor", context))

    def store(self, context: InsituContext) -> ToolStore:
        """Return the tool store (injected, else this process's for ``store_dir``)."""
        return self._store if self._store is not None else open_store(context)

    def sandbox(self, context: InsituContext) -> Sandbox:
        """Return the sandbox (injected, else this process's default).

        An injected sandbox follows the context's ``allowed_secrets`` too.

        Raises:
            ConfigurationError: See :func:`open_sandbox`; or the injected sandbox
                already follows another ``allowed_secrets``.
        """
        if self._sandbox is None:
            return open_sandbox(context)
        from insitu.tool_store.admission import SecretPolicyError, set_secret_policy

        try:
            set_secret_policy(self._sandbox, context.allowed_secrets)
        except SecretPolicyError as exc:
            raise ConfigurationError(str(exc)) from None
        return self._sandbox
