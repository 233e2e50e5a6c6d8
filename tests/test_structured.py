"""Recovering structured replies from misbehaving models, and bounded re-asks."""

from __future__ import annotations

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage
from pydantic import BaseModel

from insitu import aio
from insitu.structured import (
    StructuredOutputError,
    ask_structured,
    code_blocks,
    extract_json,
    parse_reply,
)


class Plan(BaseModel):
    bind: list[str]
    guidance: str


@pytest.mark.parametrize(
    "text",
    [
        '{"bind": ["a"], "guidance": "g"}',
        'Sure! Here is the plan:\n```json\n{"bind": ["a"], "guidance": "g"}\n```\nGood luck.',
        "```\n{'bind': ['a'], 'guidance': 'g',}\n```",
        'Plan follows {"bind": ["a"], "guidance": "g"} as requested.',
        '{"bind": ["a",], "guidance": "g", }',
    ],
)
def test_recovers_json(text: str) -> None:
    assert parse_reply(text, Plan) == Plan(bind=["a"], guidance="g")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("I cannot help with that.", "no JSON object"),
        ('{"bind": ["a"], "guidance": "unfinished', "truncated"),
        ('```json\n{"bind": ["a"]', "truncated"),
    ],
)
def test_explains_unusable_replies(text: str, reason: str) -> None:
    with pytest.raises(StructuredOutputError, match=reason):
        extract_json(text)


def test_wrong_fields_are_listed() -> None:
    with pytest.raises(StructuredOutputError) as info:
        parse_reply('{"bind": "a"}', Plan)
    message = str(info.value)
    assert "bind: Input should be a valid list" in message
    assert "guidance: Field required" in message


def test_code_blocks_include_unterminated_last_block() -> None:
    blocks = code_blocks("a\n```python\nx = 1\n```\n```json\n[1]\n```\n```python\ny = 2\n")
    assert blocks == [("python", "x = 1\n"), ("json", "[1]\n"), ("python", "y = 2\n")]


def test_reasks_with_the_error_then_succeeds() -> None:
    model = FakeListChatModel(responses=["no idea", '{"bind": [], "guidance": "ok"}'])
    retries: list[str] = []
    asked = aio.run(
        ask_structured(
            model.ainvoke,
            [HumanMessage("plan")],
            lambda text: parse_reply(text, Plan),
            on_retry=lambda attempt, reason: retries.append(reason),
        )
    )
    assert asked.value.guidance == "ok"
    assert asked.attempts == 2
    assert "no JSON object" in retries[0]


def test_gives_up_after_max_attempts() -> None:
    model = FakeListChatModel(responses=["nope", "still nope", "never"])
    with pytest.raises(StructuredOutputError, match="after 2 attempts"):
        aio.run(
            ask_structured(
                model.ainvoke, [HumanMessage("x")], lambda t: parse_reply(t, Plan), max_attempts=2
            )
        )
