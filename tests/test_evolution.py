"""EGL arithmetic: hand-computed sequences, the descent condition and the 1/t decay."""

from __future__ import annotations

from fractions import Fraction

import pytest
from pydantic import ValidationError

from insitu.evolution import (
    StepCounters,
    descent_condition,
    descent_steps,
    egl,
    egl_from_counters,
    tool_success_rate,
)


def test_egl_matches_hand_computed_values() -> None:
    # created 3, 2, 1, 0; invocations 2, 4, 6, 8
    # cumulative  3/2, 5/6, 6/12, 6/20
    assert egl([3, 2, 1, 0], [2, 4, 6, 8]) == pytest.approx([1.5, 5 / 6, 0.5, 0.3])


def test_egl_is_none_until_the_first_invocation() -> None:
    # No invocation yet: undefined, not 0 and not infinity.
    assert egl([2, 1, 0, 1], [0, 0, 4, 0]) == [None, None, 0.75, 1.0]
    assert egl([0, 0], [0, 0]) == [None, None]
    assert egl([], []) == []
    # Once defined it stays defined (cumulative invocations never fall).
    assert egl([0, 5], [3, 0]) == [0.0, pytest.approx(5 / 3)]


def test_egl_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="3 steps but invocations has 2"):
        egl([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"invocations\[1\] = -1"):
        egl([1, 1], [1, -1])
    with pytest.raises(ValueError, match=r"created\[0\] = 1.5"):
        egl([1.5], [1])  # type: ignore[list-item]


def test_egl_from_counters_reads_created_and_invocations() -> None:
    steps = [
        StepCounters(step=1, tools_created=4, invocations=0, library_size=4),
        StepCounters(step=2, tools_created=2, invocations=6, successes=5, library_size=6),
        StepCounters(step=3, tools_created=0, tools_merged=2, invocations=10, library_size=4),
    ]
    assert egl_from_counters(steps) == [None, 1.0, pytest.approx(6 / 16)]


def test_descent_condition_is_marginal_ratio_below_cumulative() -> None:
    # Running ratio C/U = 4/8 = 0.5.
    assert descent_condition(1, 4, 4, 8)  # 0.25 < 0.5: (4+1)/(8+4) = 0.4167 < 0.5
    assert not descent_condition(2, 4, 4, 8)  # 0.5 == 0.5: stays 0.5
    assert not descent_condition(3, 4, 4, 8)  # 0.75 > 0.5: rises to 7/12
    assert descent_condition(0, 1, 4, 8)  # pure reuse always lowers a positive EGL
    assert not descent_condition(1, 0, 4, 8)  # creating without invoking raises it
    assert not descent_condition(0, 0, 4, 8)  # an empty step changes nothing
    assert not descent_condition(0, 5, 0, 8)  # EGL is 0 and stays 0
    assert not descent_condition(1, 1, 3, 0)  # EGL was undefined: no descent
    with pytest.raises(ValueError):
        descent_condition(-1, 1, 1, 1)


def test_descent_condition_agrees_with_egl_exhaustively() -> None:
    for big_c in range(6):
        for big_u in range(1, 6):
            for c in range(6):
                for u in range(6):
                    before = Fraction(big_c, big_u)
                    after = Fraction(big_c + c, big_u + u)
                    assert descent_condition(c, u, big_c, big_u) == (after < before)
                    if u:
                        # Equivalently: the step's ratio is below the *new* cumulative one.
                        assert (Fraction(c, u) < after) == (after < before)


def test_descent_steps_over_a_run() -> None:
    created, invocations = [2, 1, 0, 3, 0], [0, 4, 2, 2, 0]
    assert descent_steps(created, invocations) == [None, None, True, False, False]
    values = egl(created, invocations)
    assert values == [None, 0.75, 0.5, 0.75, 0.75]


def test_egl_decays_as_one_over_t_once_creation_stops() -> None:
    # Ten steps of creating, then 1000 steps of reuse at 7 invocations per step.
    created = [3] * 10 + [0] * 1000
    invocations = [5] * 10 + [7] * 1000
    values = egl(created, invocations)
    total_created = 30
    for t in range(10, len(values)):
        steps_since = t - 9  # reuse steps so far
        expected = total_created / (50 + 7 * steps_since)
        assert values[t] == pytest.approx(expected)
        # Strictly decreasing while creation is stopped.
        assert values[t] < values[t - 1]
    # O(1/t): t * EGL(t) = 30 t / (7 t - 13) is bounded (largest at t = 10: 300 / 57)
    # and tends to C / u = 30 / 7.
    scaled = [t * values[t] for t in range(10, len(values))]
    assert max(scaled) == pytest.approx(300 / 57)
    assert scaled[-1] == pytest.approx(30 / 7, rel=0.01)


def test_tool_success_rate() -> None:
    assert tool_success_rate(3, 4) == 0.75
    assert tool_success_rate([1, 2, 0], [1, 4, 0]) == 0.6
    assert tool_success_rate(0, 0) is None
    assert tool_success_rate([], []) is None
    with pytest.raises(ValueError, match="cannot exceed"):
        tool_success_rate(5, 4)
    with pytest.raises(ValueError):
        tool_success_rate([2, -1], [3, 3])


def test_step_counters_validate_and_report_success_rate() -> None:
    step = StepCounters(step=2, tasks=8, tools_created=1, invocations=10, successes=9)
    assert step.success_rate == 0.9
    assert StepCounters().success_rate is None
    assert StepCounters().tools_archived == 0 and StepCounters().library_size == 0
    with pytest.raises(ValidationError, match="cannot exceed"):
        StepCounters(invocations=1, successes=2)
    with pytest.raises(ValidationError):
        StepCounters(tools_created=-1)
    with pytest.raises(ValidationError):
        StepCounters(tools_creatd=1)  # type: ignore[call-arg]
