"""Test doubles for insitu's LLM roles: scripted, not intelligent.

- :class:`ScriptedChatModel`: a LangChain chat model that replies from a script.
- :class:`ScriptedOpenAIServer`: a loopback OpenAI-protocol HTTP server that
  replies from a script, for exercising the real ``ChatOpenAI`` client.
- :func:`reply`, :class:`HTTPError`, :class:`Truncated`, :class:`Empty`: reply
  forms both understand.
"""

from insitu.testing.openai_server import ScriptedOpenAIServer
from insitu.testing.scripted import (
    Empty,
    HTTPError,
    ScriptedChatModel,
    ScriptExhaustedError,
    Truncated,
    normalize_reply,
    reply,
)

__all__ = [
    "Empty",
    "HTTPError",
    "ScriptExhaustedError",
    "ScriptedChatModel",
    "ScriptedOpenAIServer",
    "Truncated",
    "normalize_reply",
    "reply",
]
