"""What counts as an answer: junk, give-ups, echoes and tool-less replies are not completed."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from insitu.nodes.common import echoes_prompt
from insitu.structured import clean_reply_text, unusable_answer_reason
from insitu.testing import ScriptedChatModel
from insitu.testing.team import ScriptedTeam, prompt_text

MEAN_TASK = "What is the mean of 3, 5, 10 and 2?"


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   ",
        "<|im_start|>user",
        "<|im_end|>",
        "<start_of_turn>model\n<end_of_turn>",
        "<|eot_id|>",
        "[]",
        "{}",
        "null",
        "None",
        "...",
        "I could not find a way to compute this.",
        "I'm sorry, but I can't help with that.",
        "Unfortunately the tool failed.",
        '{"bind": ["summarize_numbers"], "requests": []}',
        "Sure! My plan: " + '{"bind": [], "requests": [{"name": "x"}]}',
        "```python\nprint(1)\n```",
        "Here it is:\n```python\nprint(1)\n```",
        '{"a": {"a": {"a": 1}}}',
        "[" * 5000,
        '{"a":' * 3000,
        "<think>The mean is 5.</think>",
        "This task is impossible with the tools available. I give up.",
    ],
)
def test_junk_is_not_an_answer(reply: str) -> None:
    assert unusable_answer_reason(clean_reply_text(reply)) is not None


@pytest.mark.parametrize(
    "reply",
    [
        "mean 5, median 4",
        "42",
        "0",
        "[2, 3, 5, 7]",
        "The mean is 5.0 (from 3, 5, 10 and 2).",
        "<think>add them up</think>The mean is 5.",
        "<|im_start|>assistant\nThe mean is 5.<|im_end|>",
        "Yes",
        "false",
    ],
)
def test_answers_are_answers(reply: str) -> None:
    assert unusable_answer_reason(clean_reply_text(reply)) is None


def test_an_echo_of_the_prompt_is_recognised() -> None:
    prompt: list[BaseMessage] = [
        SystemMessage("You are the Integrator.\n\n## Reply\nReply with the answer."),
        HumanMessage("## Task\nWhat is 2 + 2?\n\n## Work record\n(no tool was called)"),
    ]
    assert echoes_prompt("## Task\nWhat is 2 + 2?", prompt)
    assert not echoes_prompt("4: from 2 + 2", prompt)


def _team_except(role_prefix: str, reply: Any) -> ScriptedChatModel:
    team = ScriptedTeam()

    def respond(messages: list[BaseMessage], tools: list[dict]) -> Any:
        if prompt_text(messages).startswith(role_prefix):
            return reply(messages) if callable(reply) else reply
        return team.respond(messages, tools)

    return ScriptedChatModel(responder=respond)


def test_an_executor_that_echoes_its_prompt_does_not_complete(run_episode) -> None:
    team = ScriptedTeam()

    def respond(messages: list[BaseMessage], tools: list[dict]) -> Any:
        called = any(m.type == "tool" for m in messages)
        if prompt_text(messages).startswith("You are the Executor") and called:
            return prompt_text(messages)  # calls the tool, then echoes its prompt
        return team.respond(messages, tools)

    result, _ = run_episode(MEAN_TASK, ScriptedChatModel(responder=respond))
    assert result.status == "incomplete"
    assert "repeats the instructions" in result.answer


def test_an_integrator_echo_falls_back_to_the_executors_result(run_episode) -> None:
    model = _team_except("You are the Integrator", lambda messages: prompt_text(messages))
    result, _ = run_episode(MEAN_TASK, model)
    assert result.status == "completed"
    assert result.answer == "Result: mean 5, median 4"


def test_an_answer_without_calling_the_bound_tools_does_not_complete(run_episode) -> None:
    model = _team_except("You are the Executor", "The mean is 5.")
    result, _ = run_episode(MEAN_TASK, model, max_reasks=1)
    assert result.status == "incomplete"
    assert "no tool was called" in result.answer
    assert result.metrics["tool_invocations"] == 0


def test_an_incomplete_answer_always_says_why(run_episode) -> None:
    model = _team_except("You are the Executor", "I could not find a way to compute this.")
    result, _ = run_episode(MEAN_TASK, model)
    assert result.status == "incomplete"
    assert result.answer.startswith("Could not complete the task: ")
    assert "gives up" in result.answer
