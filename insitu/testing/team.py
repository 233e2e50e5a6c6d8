"""A scripted stand-in for the LLM team, for tests, benchmarks and the offline demo.

This is a test double, not intelligence: it recognises which role is being
asked (from the prompt files), matches the task against a fixed catalogue of
:class:`Capability` entries by regular expression, and replies with canned
plans, canned tool modules and tool calls whose arguments it extracts from
the task. Everything it talks to (graph, store, sandbox, checkpointer) is
real, which is what it exists to exercise.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from insitu.llm import JSON_CHECK_SYSTEM, PROBE_SYSTEM

#: The heading that the Executor's text protocol adds to its prompt.
TEXT_PROTOCOL_HEADING = "## How to call a tool"
SCRIPTED_LABEL = "scripted demo model — set OPENAI_BASE_URL/OPENAI_API_KEY for real runs"


@dataclass
class Capability:
    """One tool the scripted team knows how to write and use.

    Attributes:
        name: The tool's name.
        description: What the Manager writes in its request.
        source: The module the ToolDeveloper replies with.
        tests: The tests it replies with.
        pattern: Matches tasks that need this tool.
        arguments: Task match -> the tool's input.
        answer: Tool output dict -> the final answer text.
        broken_source: If set, the first module offered (fails its tests), to
            exercise the ToolDeveloper's repair loop.
    """

    name: str
    description: str
    source: str
    tests: list[dict[str, Any]]
    pattern: str
    arguments: Callable[[re.Match[str]], dict[str, Any]]
    answer: Callable[[dict[str, Any]], str]
    broken_source: str | None = None


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]


SUMMARIZE_NUMBERS = Capability(
    name="summarize_numbers",
    description="Computes count, mean, median, population standard deviation, minimum and "
    "maximum of a list of numbers and returns them.",
    source="""import statistics

from pydantic import BaseModel, Field

__TOOL_META__ = {
    "name": "summarize_numbers",
    "description": "Computes count, mean, median, population standard deviation, minimum and "
    "maximum of a list of numbers and returns them.",
    "dependencies": [],
}


class InputModel(BaseModel):
    values: list[float] = Field(description="The numbers; at least one.")


class OutputModel(BaseModel):
    count: int
    mean: float
    median: float
    stdev: float
    minimum: float
    maximum: float


def run(input: InputModel) -> OutputModel:
    if not input.values:
        raise ValueError("values must contain at least one number")
    v = input.values
    return OutputModel(count=len(v), mean=statistics.fmean(v), median=statistics.median(v),
                       stdev=statistics.pstdev(v), minimum=min(v), maximum=max(v))
""",
    tests=[
        {"name": "three", "input": {"values": [1, 2, 3]}, "expect": {"count": 3, "mean": 2.0}},
        {
            "name": "spread",
            "input": {"values": [2, 4, 4, 4, 5, 5, 7, 9]},
            "check": "approx(output['stdev'], 2.0)",
        },
        {"name": "empty", "input": {"values": []}, "expect_error": True},
    ],
    pattern=r"(?:mean|average|median|statistics|summary)[^\d-]*((?:-?\d+(?:\.\d+)?[,\s]*(?:and\s+)?)+)",
    arguments=lambda m: {"values": _numbers(m.group(1))},
    answer=lambda out: f"mean {out['mean']:g}, median {out['median']:g}",
)

DATE_DIFFERENCE = Capability(
    name="compute_date_difference",
    description="Computes the number of days from a start date to an end date (ISO format) "
    "and returns it with the weekday of each date.",
    source="""from datetime import date

from pydantic import BaseModel, Field

__TOOL_META__ = {
    "name": "compute_date_difference",
    "description": "Computes the number of days from a start date to an end date (ISO format) "
    "and returns it with the weekday of each date.",
    "dependencies": [],
}


class InputModel(BaseModel):
    start: str = Field(description="Start date, YYYY-MM-DD.")
    end: str = Field(description="End date, YYYY-MM-DD.")


class OutputModel(BaseModel):
    days: int
    start_weekday: str
    end_weekday: str


def run(input: InputModel) -> OutputModel:
    a, b = date.fromisoformat(input.start), date.fromisoformat(input.end)
    return OutputModel(days=(b - a).days, start_weekday=a.strftime("%A"),
                       end_weekday=b.strftime("%A"))
""",
    broken_source="""from datetime import date

from pydantic import BaseModel

__TOOL_META__ = {
    "name": "compute_date_difference",
    "description": "Computes the number of days between two dates.",
    "dependencies": [],
}


class InputModel(BaseModel):
    start: str
    end: str


class OutputModel(BaseModel):
    days: int
    start_weekday: str
    end_weekday: str


def run(input: InputModel) -> OutputModel:
    a, b = date.fromisoformat(input.start), date.fromisoformat(input.end)
    return OutputModel(days=(a - b).days, start_weekday="", end_weekday="")
""",
    tests=[
        {
            "name": "new_year",
            "input": {"start": "2023-12-25", "end": "2024-01-01"},
            "expect": {"days": 7, "start_weekday": "Monday"},
        },
        {
            "name": "leap",
            "input": {"start": "2024-02-01", "end": "2024-03-01"},
            "expect": {"days": 29},
        },
        {
            "name": "bad_date",
            "input": {"start": "2024-13-01", "end": "2024-01-01"},
            "expect_error": True,
        },
    ],
    pattern=r"(\d{4}-\d{2}-\d{2})\D+(\d{4}-\d{2}-\d{2})",
    arguments=lambda m: {"start": m.group(1), "end": m.group(2)},
    answer=lambda out: f"{out['days']} days",
)

DEFAULT_CAPABILITIES = (SUMMARIZE_NUMBERS, DATE_DIFFERENCE)


def _text(message: BaseMessage) -> str:
    content = message.content
    return content if isinstance(content, str) else json.dumps(content)


def prompt_text(messages: Sequence[BaseMessage]) -> str:
    """The prompt a role was given: its system and user messages before any reply."""
    parts = []
    for message in messages:
        if isinstance(message, AIMessage | ToolMessage):
            break
        parts.append(_text(message))
    return "\n\n".join(parts)


def _tool_names(tools: Sequence[dict[str, Any]]) -> set[str]:
    """Names of bound tools, in LangChain's or OpenAI's dict form."""
    return {(t.get("function") or t).get("name", "") for t in tools}


def _section(prompt: str, heading: str) -> str:
    match = re.search(rf"## {re.escape(heading)}\n(.*?)(?:\n## |\Z)", prompt, re.DOTALL)
    return match.group(1).strip() if match else ""


@dataclass
class ScriptedTeam:
    """Replies for every insitu role, from a catalogue of capabilities.

    Use ``ScriptedTeam().model()`` to get a ``ScriptedChatModel`` driven by it.

    Attributes:
        capabilities: What the team can build and use.
        first_build_broken: Offer ``broken_source`` first where a capability has one.
    """

    capabilities: Sequence[Capability] = DEFAULT_CAPABILITIES
    first_build_broken: bool = False
    role_calls: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def model(self, latency_s: float = 0.0) -> Any:
        """Return a ``ScriptedChatModel`` that answers with this team's script."""
        from insitu.testing.scripted import ScriptedChatModel

        return ScriptedChatModel(responder=self.respond, latency_s=latency_s, label=SCRIPTED_LABEL)

    def openai_responder(self) -> Callable[[dict[str, Any]], Any]:
        """Return a responder for :class:`~insitu.testing.ScriptedOpenAIServer`.

        It turns each OpenAI chat-completions request body back into LangChain
        messages and answers with :meth:`respond`, so the same script drives the
        real ``ChatOpenAI`` client over HTTP.
        """
        from langchain_core.messages import convert_to_messages

        def responder(body: dict[str, Any]) -> Any:
            return self.respond(convert_to_messages(body["messages"]), body.get("tools") or [])

        return responder

    def capability_for(self, text: str) -> tuple[Capability, re.Match[str]] | None:
        """Return the first capability whose pattern matches ``text``."""
        for capability in self.capabilities:
            match = re.search(capability.pattern, text, re.IGNORECASE)
            if match:
                return capability, match
        return None

    def respond(self, messages: list[BaseMessage], tools: list[dict[str, Any]]) -> Any:
        """Reply as whichever role the prompt addresses.

        The prompt is the role's system message and the request's user message
        (read together); a tool-calling probe is answered with the probe's call.
        """
        first = prompt_text(messages)
        if first.startswith(JSON_CHECK_SYSTEM):
            return '{"status": "ok", "number": 7}'
        if first.startswith(PROBE_SYSTEM):
            if "record_number" in _tool_names(tools):
                return {
                    "content": "",
                    "tool_calls": [{"name": "record_number", "args": {"value": 7}}],
                }
            return '{"tool": "record_number", "arguments": {"value": 7}}'
        for marker, role in (
            ("You are the Manager", "manager"),
            ("You are the ToolDeveloper", "tool_developer"),
            ("You are the Executor", "executor"),
            ("You are the Integrator", "integrator"),
            ("You are reviewing one finished task", "reflection"),
            ("You are distilling usage notes", "usage_notes"),
            ("You are the Aggregator", "aggregator"),
        ):
            if first.startswith(marker):
                with self._lock:
                    self.role_calls[role] = self.role_calls.get(role, 0) + 1
                if role == "executor" and TEXT_PROTOCOL_HEADING in first:
                    return self._executor_in_text(first, messages)
                if role == "executor" and "run_python" in _tool_names(tools):
                    return self._interpreter(first, messages)
                return getattr(self, f"_{role}")(first, messages)
        return "I am a scripted model and do not know this prompt."

    def _manager(self, prompt: str, messages: list[BaseMessage]) -> str:
        task = _section(prompt, "Task")
        found = self.capability_for(task)
        if found is None:
            return json.dumps({"bind": [], "requests": [], "guidance": "Answer directly."})
        capability, _ = found
        candidates = _section(
            prompt,
            "Candidate tools (retrieved from the library for this task; you cannot see the rest)",
        )
        if re.search(rf"^- {capability.name}:", candidates, re.MULTILINE):
            return json.dumps(
                {"bind": [capability.name], "requests": [], "guidance": f"Call {capability.name}."}
            )
        return json.dumps(
            {
                "bind": [],
                "requests": [
                    {
                        "name": capability.name,
                        "description": capability.description,
                        "input": "see description",
                        "output": "see description",
                    }
                ],
                "guidance": f"Call {capability.name}.",
            }
        )

    def _tool_developer(self, prompt: str, messages: list[BaseMessage]) -> str:
        name = re.search(r"^Name: (\S+)", prompt, re.MULTILINE)
        capability = next((c for c in self.capabilities if name and c.name == name.group(1)), None)
        if capability is None:
            return "I cannot write that tool."
        attempt = sum(1 for m in messages if isinstance(m, AIMessage))
        source = capability.source
        if self.first_build_broken and capability.broken_source and attempt == 0:
            source = capability.broken_source
        return f"```python\n{source}```\n```json\n{json.dumps(capability.tests)}\n```"

    def _executor(self, prompt: str, messages: list[BaseMessage]) -> Any:
        task = _section(prompt, "Task")
        found = self.capability_for(task)
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if found is None:
            return "I could not find a way to compute this."
        capability, match = found
        if not results:
            return {
                "content": "",
                "tool_calls": [{"name": capability.name, "args": capability.arguments(match)}],
            }
        last = results[-1]
        if _text(last).startswith("ERROR") or "no tool named" in _text(last):
            if len(results) >= 2:
                return {
                    "content": "",
                    "tool_calls": [
                        {
                            "name": "report_missing_capability",
                            "args": {
                                "capability": capability.description,
                                "why": _text(last)[:200],
                            },
                        }
                    ],
                }
            return {
                "content": "",
                "tool_calls": [{"name": capability.name, "args": capability.arguments(match)}],
            }
        output = json.loads(_text(last))
        return f"Result: {capability.answer(output)}"

    def _executor_in_text(self, prompt: str, messages: list[BaseMessage]) -> str:
        """The Executor through the text protocol: JSON actions, results in user messages."""
        found = self.capability_for(_section(prompt, "Task"))
        if found is None:
            return json.dumps({"answer": "I could not find a way to compute this."})
        capability, match = found
        results = [
            _text(m).split("\n", 1)[1]
            for m in messages[2:]
            if isinstance(m, HumanMessage) and _text(m).startswith("Result of ")
        ]
        if not results or results[-1].startswith("ERROR"):
            call = {"tool": capability.name, "arguments": capability.arguments(match)}
            return json.dumps(call)
        return json.dumps({"answer": f"Result: {capability.answer(json.loads(results[-1]))}"})

    def _interpreter(self, prompt: str, messages: list[BaseMessage]) -> Any:
        """The python-interpreter baseline: run the capability's code as a program."""
        found = self.capability_for(_section(prompt, "Task"))
        if found is None:
            return "I could not find a way to compute this."
        capability, match = found
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if not results:
            program = (
                f"{capability.source}\nimport json\n"
                f"print(json.dumps(run(InputModel(**{capability.arguments(match)!r})).model_dump()))"
            )
            return {
                "content": "",
                "tool_calls": [{"name": "run_python", "args": {"code": program}}],
            }
        reply = json.loads(_text(results[-1])) if _text(results[-1]).startswith("{") else {}
        if reply.get("error") or not reply.get("stdout"):
            return f"The program failed: {_text(results[-1])[:300]}"
        return f"Result: {capability.answer(json.loads(reply['stdout']))}"

    def _integrator(self, prompt: str, messages: list[BaseMessage]) -> str:
        ending = _section(prompt, "How the work ended")
        result = re.search(r"Result: (.*)", ending)
        if result:
            return result.group(1).strip()
        return "Could not complete the task: " + ending[:300]

    def _aggregator(self, prompt: str, messages: list[BaseMessage]) -> str:
        """Call tools duplicates when their input and output fields are the same."""
        by_signature: dict[str, list[str]] = {}
        for line in _section(prompt, "Possibly similar tools").splitlines():
            match = re.match(r"- (\w+) \((input: .*?)\):", line)
            if match:
                by_signature.setdefault(match.group(2), []).append(match.group(1))
        duplicates = [names for names in by_signature.values() if len(names) > 1]
        return json.dumps({"duplicates": duplicates, "reason": "same input and output fields"})

    def _usage_notes(self, prompt: str, messages: list[BaseMessage]) -> str:
        """A canned note per tool, read off its calls: the first failure, else a good call."""
        notes = []
        calls = _section(prompt, "Tools and their calls")
        for block in re.split(r"^### ", calls, flags=re.MULTILINE):
            name, _, body = block.partition("\n")
            if not name.strip():
                continue
            failed = re.search(r"^- FAILED \((\w+)\) with (.*?): (.*)$", body, re.MULTILINE)
            worked = re.search(r"^- OK with (.*?) -> ", body, re.MULTILINE)
            if failed:
                note = (
                    f"A call with {failed.group(2)[:80]} failed ({failed.group(1)}): "
                    f"{failed.group(3)[:80]}. Pass the input fields as their schema says."
                )
            elif worked:
                note = f"Works when called with arguments shaped like {worked.group(1)[:120]}."
            else:
                continue
            notes.append({"tool": name.strip(), "notes": note})
        return json.dumps({"notes": notes})

    def _reflection(self, prompt: str, messages: list[BaseMessage]) -> str:
        tools = _section(prompt, "Tools")
        return f"- Scripted reflection. Tools: {tools.replace(chr(10), '; ')[:300]}"


def ask(text: str) -> list[BaseMessage]:
    """Convenience: a one-message prompt (for direct tests of the team)."""
    return [HumanMessage(content=text)]


def scripted_stream(count: int, *, seed: int = 0) -> list[dict[str, str]]:
    """A task stream the scripted team can solve, its two capabilities recurring.

    Returns ``count`` tasks ``{"id", "question"}`` alternating between the
    statistics and the date capability, with varying numbers and dates.
    """
    import random

    rng = random.Random(seed)
    tasks = []
    for i in range(count):
        if i % 2 == 0:
            values = ", ".join(str(rng.randint(1, 99)) for _ in range(rng.randint(3, 6)))
            question = f"What is the mean of {values}?"
        else:
            month, day = rng.randint(1, 9), rng.randint(10, 28)
            question = f"How many days from 2024-0{month}-{day} to 2025-01-01?"
        tasks.append({"id": f"task-{i:04d}", "question": question})
    return tasks
