"""Test doubles for insitu's LLM roles: scripted, not intelligent.

- :class:`ScriptedChatModel`: a LangChain chat model that replies from a script.
- :class:`ScriptedOpenAIServer`: a loopback OpenAI-protocol HTTP server that
  replies from a script, for exercising the real ``ChatOpenAI`` client; it can
  also misbehave (errors, slowness, dropped connections, ignored tools, outages).
- :func:`reply`, :class:`HTTPError`, :class:`Truncated`, :class:`Empty`,
  :class:`Slow`, :class:`Drop`: reply forms both understand.
- :func:`malformed_replies` and friends (:mod:`insitu.testing.fuzz`): seeded
  hostile and malformed replies for robustness tests.
- :mod:`insitu.testing.services` (imported on its own): real PostgreSQL, Chroma
  server and Ray cluster processes on loopback, for the scale tests and benchmarks.
"""

from insitu.testing.fuzz import (
    CATEGORIES as MALFORMED_CATEGORIES,
)
from insitu.testing.fuzz import (
    labelled_malformed_replies,
    malformed_replies,
    malformed_reply,
    malformed_responder,
    random_malformed_reply,
)
from insitu.testing.openai_server import ScriptedOpenAIServer
from insitu.testing.scripted import (
    Drop,
    Empty,
    HTTPError,
    ScriptedChatModel,
    ScriptExhaustedError,
    Slow,
    Truncated,
    normalize_reply,
    reply,
    split_delay,
)

__all__ = [
    "MALFORMED_CATEGORIES",
    "Drop",
    "Empty",
    "HTTPError",
    "ScriptExhaustedError",
    "ScriptedChatModel",
    "ScriptedOpenAIServer",
    "Slow",
    "Truncated",
    "labelled_malformed_replies",
    "malformed_replies",
    "malformed_reply",
    "malformed_responder",
    "normalize_reply",
    "random_malformed_reply",
    "reply",
    "split_delay",
]
