"""Convergence arithmetic of a self-evolving tool library: EGL and friends.

EGL (tools created per tool invocation, cumulative; lower is better) tracks
whether the library is converging: early on almost every task creates a tool;
once the library covers the task stream, tasks reuse tools and creation stops.
With ``c_s`` tools created and ``u_s`` tool invocations at step ``s``::

    EGL(t) = (c_1 + ... + c_t) / (u_1 + ... + u_t) = C_t / U_t

EGL is undefined while no tool has been invoked (``U_t = 0``); this module
returns ``None`` there, never 0 or infinity, so that a plot or a mean cannot
mistake "nothing measured yet" for a value.

Two properties the functions below make usable:

* **descent**: ``EGL(t) < EGL(t-1)`` exactly when the step's own ratio is
  below the running one, ``c_t / u_t < C_{t-1} / U_{t-1}`` (``EGL(t)`` is the
  mediant of the two; see :func:`descent_condition`);
* **decay**: once creation stops at step ``s`` and invocations go on at a rate
  of at least ``u`` per step, ``EGL(t) <= C_s / (U_s + u (t - s))``, i.e.
  ``O(1/t)``.

A step is whatever the caller counts by (a batch of tasks, usually).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StepCounters(BaseModel):
    """What one step (a batch of tasks) did to and with the tool library.

    Counts are of this step only, except ``library_size``, which is the number
    of active tools at the end of the step.
    """

    model_config = ConfigDict(extra="forbid")

    step: int = Field(default=0, ge=0, description="Index of the step (batch), from 0 or 1.")
    tasks: int = Field(default=0, ge=0, description="Tasks run in this step.")
    tools_created: int = Field(default=0, ge=0, description="New tools added to the library.")
    tools_repaired: int = Field(default=0, ge=0, description="New versions of existing tools.")
    tools_merged: int = Field(
        default=0, ge=0, description="Tools absorbed into another by a merge (no longer active)."
    )
    tools_archived: int = Field(default=0, ge=0, description="Tools archived for other reasons.")
    invocations: int = Field(default=0, ge=0, description="Tool calls made while solving tasks.")
    successes: int = Field(default=0, ge=0, description="Tool calls that returned normally.")
    library_size: int = Field(default=0, ge=0, description="Active tools at the end of the step.")

    @model_validator(mode="after")
    def _successes_within_invocations(self) -> StepCounters:
        if self.successes > self.invocations:
            raise ValueError(
                f"successes ({self.successes}) cannot exceed invocations ({self.invocations})"
            )
        return self

    @property
    def success_rate(self) -> float | None:
        """Share of this step's invocations that succeeded (``None`` without any)."""
        return tool_success_rate(self.successes, self.invocations)


def _check_counts(name: str, values: Sequence[int]) -> None:
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}[{i}] = {value!r} is not a non-negative integer")


def egl(created: Sequence[int], invocations: Sequence[int]) -> list[float | None]:
    """Cumulative EGL after each step.

    ``EGL(t) = sum(created[:t+1]) / sum(invocations[:t+1])`` for each index ``t``
    (the formula's steps ``1..t``, counted from 0 here).

    Args:
        created: Tools created at each step.
        invocations: Tool invocations at each step (same length).

    Returns:
        One value per step; ``None`` while the cumulative invocations are 0.

    Raises:
        ValueError: If the lengths differ or a count is negative or not an int.

    Example:
        >>> egl([2, 1, 0, 0], [0, 4, 2, 6])
        [None, 0.75, 0.5, 0.25]
    """
    if len(created) != len(invocations):
        raise ValueError(f"created has {len(created)} steps but invocations has {len(invocations)}")
    _check_counts("created", created)
    _check_counts("invocations", invocations)
    return [
        (c / u if u else None)
        for c, u in zip(accumulate(created), accumulate(invocations), strict=True)
    ]


def egl_from_counters(steps: Sequence[StepCounters]) -> list[float | None]:
    """Cumulative EGL over a run's :class:`StepCounters` (``tools_created`` / ``invocations``).

    Args:
        steps: The counters of each step, in order.

    Returns:
        As :func:`egl`.
    """
    return egl([s.tools_created for s in steps], [s.invocations for s in steps])


def descent_condition(
    created: int, invocations: int, cumulative_created: int, cumulative_invocations: int
) -> bool:
    """Whether a step with these counts lowers EGL.

    ``EGL(t) = (C + c) / (U + u)`` is the mediant of the running ratio ``C / U``
    and the step's ratio ``c / u``, so it lies strictly between them when they
    differ: EGL falls exactly when ``c / u < C / U`` (equivalently, when the
    step's ratio is below the new cumulative one). Compared by
    cross-multiplication, ``c * U < C * u``, which needs no division and also
    covers ``u = 0`` (a step that creates without invoking never lowers EGL).

    Args:
        created: ``c``, tools created in this step.
        invocations: ``u``, invocations in this step.
        cumulative_created: ``C``, tools created before this step.
        cumulative_invocations: ``U``, invocations before this step.

    Returns:
        True if ``EGL`` after the step is strictly below ``EGL`` before it;
        False otherwise, including when EGL was undefined before (``U = 0``).

    Raises:
        ValueError: On a negative count.
    """
    _check_counts("counts", [created, invocations, cumulative_created, cumulative_invocations])
    if cumulative_invocations == 0:
        return False
    return created * cumulative_invocations < cumulative_created * invocations


def descent_steps(created: Sequence[int], invocations: Sequence[int]) -> list[bool | None]:
    """:func:`descent_condition` at each step of a run.

    Args:
        created: Tools created at each step.
        invocations: Tool invocations at each step.

    Returns:
        For each step, whether it lowered EGL; ``None`` where EGL was undefined
        before the step (the first steps until an invocation happens).

    Raises:
        ValueError: As :func:`egl`.
    """
    egl(created, invocations)  # validates
    out: list[bool | None] = []
    total_c = total_u = 0
    for c, u in zip(created, invocations, strict=True):
        out.append(descent_condition(c, u, total_c, total_u) if total_u else None)
        total_c += c
        total_u += u
    return out


def tool_success_rate(
    successes: int | Sequence[int], invocations: int | Sequence[int]
) -> float | None:
    """Share of tool invocations that succeeded.

    Args:
        successes: Successful calls, a count or per-step counts (summed).
        invocations: All calls, a count or per-step counts (summed).

    Returns:
        ``successes / invocations`` in ``[0, 1]``; ``None`` when there were no
        invocations.

    Raises:
        ValueError: On a negative count or more successes than invocations.
    """
    per_s = [successes] if isinstance(successes, int) else list(successes)
    per_u = [invocations] if isinstance(invocations, int) else list(invocations)
    _check_counts("successes", per_s)
    _check_counts("invocations", per_u)
    total_s, total_u = sum(per_s), sum(per_u)
    if total_s > total_u:
        raise ValueError(f"successes ({total_s}) cannot exceed invocations ({total_u})")
    return total_s / total_u if total_u else None


__all__ = [
    "StepCounters",
    "descent_condition",
    "descent_steps",
    "egl",
    "egl_from_counters",
    "tool_success_rate",
]
