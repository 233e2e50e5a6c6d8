"""insitu.sandbox: run model-written tool modules in a real sandbox.

Quick use::

    from insitu.sandbox import Sandbox

    with Sandbox() as sandbox:
        info = sandbox.describe(source)               # schemas, metadata
        outcome = sandbox.call(source, {"values": [1, 2]}, workdir=path)
        report = sandbox.run_tests(source, tests, workdir=path)

The backend is probed once per process (:func:`probe_backend`): bubblewrap when
it works here, else a loudly announced degraded process sandbox. Force one with
``SandboxSettings(backend=...)`` or env ``INSITU_SANDBOX_BACKEND``.
"""

from insitu.sandbox.backend import BackendInfo, probe_backend
from insitu.sandbox.core import Sandbox
from insitu.sandbox.models import (
    ErrorKind,
    Outcome,
    SandboxSettings,
    TestCaseResult,
    TestReport,
)
from insitu.sandbox.toolenv import DependencyReport, ToolEnvironment

__all__ = [
    "BackendInfo",
    "DependencyReport",
    "ErrorKind",
    "Outcome",
    "Sandbox",
    "SandboxSettings",
    "TestCaseResult",
    "TestReport",
    "ToolEnvironment",
    "probe_backend",
]
