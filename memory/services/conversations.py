"""Conversation memory: a session's transcript as a versioned document, and the facts it states.

``add`` appends turns to the document ``conversations/<session>`` (each call is a new version, so the
transcript's history is the conversation's growth). Optionally the facts the user states are extracted
(:func:`rule_facts`, the base model with ``extract="model"``, or any callable) and each is kept as the document
``facts/<subject>``: a fact about a subject the memory already holds a fact about *supersedes* it as a new
version of that document: the current version answers, the old one stays in its history and diffs, and
nothing is deleted.

Transcript lines read ``role: content``, one a turn (a backslash and a newline in the content are written
``\\\\`` and ``\\n``, so :func:`parse_transcript` gives the turns back exactly). While facts are extracted the
transcript has no chunks: it is the record, the facts are what retrieval finds, so a preference the user has
since changed never competes with the current one.

>>> [(f.subject, f.text) for f in rule_facts([("user", "Actually, my favorite colour is green now.")])]
[('favourite colour', "The user's favourite colour is green.")]
>>> parse_transcript(render_turns([("user", "two\\nlines")]))
[('user', 'two\\nlines')]
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memory.errors import NotFoundError, ValidationError
from memory.services.documents import DocumentStore
from memory.services.records import validate_document_id
from memory.types import AddResult, _Record

log = logging.getLogger(__name__)

TRANSCRIPTS = "conversations/"
FACTS = "facts/"
ROLES = ("system", "user", "assistant", "tool")
_ROLE_ALIASES = {  # LangChain's message types, LlamaIndex's MessageRole values
    "human": "user",
    "ai": "assistant",
    "bot": "assistant",
    "chatbot": "assistant",
    "model": "assistant",
    "developer": "system",
    "function": "tool",
}
MAX_TURNS = 1000  # per call
# Appending is read-then-write: calls on one session in this process take turns (striped locks). Processes
# appending to one session at once (two servers) can still lose a call's turns; give each writer its session.
_LOCKS = [threading.Lock() for _ in range(64)]


@dataclass(frozen=True)
class Fact:
    """Something the user stated: ``subject`` names the slot (one document per subject), ``text`` the fact."""

    subject: str
    text: str


@dataclass(frozen=True)
class ConversationResult(_Record):
    """What ``add_conversation`` did: the transcript's new version and each fact's (``new_version``: it
    superseded an earlier fact about the same subject; ``unchanged``: the memory already held it)."""

    session: str
    transcript: AddResult
    facts: list[AddResult] = field(default_factory=list)

    @property
    def superseded(self) -> list[str]:
        """Ids of the fact documents whose earlier version this call superseded."""
        return [r.document.id for r in self.facts if r.status == "new_version" and r.document is not None]


# ============================================================================ turns
def normalise_turns(messages: Iterable[Any]) -> list[tuple[str, str]]:
    """``(role, text)`` pairs of ``messages``: dicts with ``role``/``content``, ``(role, text)`` pairs, or
    message objects with ``type`` or ``role`` and ``content`` (LangChain, LlamaIndex)."""
    out: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if isinstance(m, Mapping):
            role, content = m.get("role"), m.get("content")
        elif isinstance(m, (tuple, list)) and len(m) == 2:
            role, content = m
        else:
            role = getattr(m, "role", None) or getattr(m, "type", None)
            content = getattr(m, "content", None)
        role = getattr(role, "value", role)  # enums (LlamaIndex's MessageRole)
        role = _ROLE_ALIASES.get(str(role).lower(), str(role).lower()) if role is not None else None
        if role not in ROLES:
            raise ValidationError(f"message {i}: role must be one of {', '.join(ROLES)}, got {role!r}")
        if isinstance(content, list):  # content blocks: keep the text parts
            content = "".join(
                b if isinstance(b, str) else str(b.get("text", "")) for b in content if isinstance(b, (str, Mapping))
            )
        if not isinstance(content, str):
            raise ValidationError(f"message {i}: content must be text, got {type(content).__name__}")
        out.append((role, content))
    if not out:
        raise ValidationError("a conversation needs at least one message")
    if len(out) > MAX_TURNS:
        raise ValidationError(f"{len(out)} messages in one call, over {MAX_TURNS}; add them in parts")
    return out


def _escape(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def render_turns(turns: Sequence[tuple[str, str]]) -> str:
    """Transcript lines, one per turn (see the module docstring)."""
    return "\n".join(f"{role}: {_escape(text)}".rstrip() for role, text in turns)


def parse_transcript(text: str) -> list[tuple[str, str]]:
    """The turns of a transcript written by :func:`render_turns`."""
    turns = []
    for line in text.split("\n"):
        role, _, rest = line.partition(":")
        if not rest and role not in ROLES:
            continue
        content = re.sub(r"\\(\\|n)", lambda m: "\n" if m[1] == "n" else "\\", rest[1:] if rest[:1] == " " else rest)
        turns.append((role, content))
    return turns


# ============================================================================ facts
_FAVOURITE = re.compile(r"\bfavou?rite\b", re.IGNORECASE)
# a value ends at a sentence mark, a comma, or "and/but" starting another statement ("... and my cat is ...")
_VALUE = r"(?:now |still )?([^.!?\n,;]+?)(?=\s+(?:and|but)\s+(?:my|I)\b|[.!?\n,;]|$)"
_MY = re.compile(r"\bmy ((?:[a-z'-]+ ){0,3}?[a-z'-]+) (is|are) " + _VALUE, re.IGNORECASE)
_OTHERS = [  # (pattern, subject, template of the fact)
    (re.compile(r"\bI (?:now |still )?live in ([^.!?\n,]+)", re.IGNORECASE), "home", "The user lives in {0}."),
    (
        re.compile(r"\bI (?:now |still )?work (at|for|as) ([^.!?\n,]+)", re.IGNORECASE),
        "work",
        "The user works {0} {1}.",
    ),
    (re.compile(r"\bI(?: am|'m) allergic to ([^.!?\n,]+)", re.IGNORECASE), "allergy", "The user is allergic to {0}."),
]
_TRAILING = re.compile(r"\s+(?:now|anymore|these days|nowadays|actually|though|too)$", re.IGNORECASE)


def _clean(value: str) -> str:
    value = value.strip().strip("\"'")
    while (stripped := _TRAILING.sub("", value)) != value:
        value = stripped
    return value


def rule_facts(turns: Sequence[tuple[str, str]]) -> list[Fact]:
    """Facts the user states in a few common forms ("my X is Y", "I live in", "I work at", "I'm allergic to");
    later statements about the same subject come later in the list. Deterministic and model-free."""
    facts: list[Fact] = []
    for role, text in turns:
        if role != "user":
            continue
        for m in _MY.finditer(text):
            subject = _FAVOURITE.sub("favourite", m[1].lower())
            facts.append(Fact(subject, f"The user's {subject} {m[2].lower()} {_clean(m[3])}."))
        for pattern, subject, template in _OTHERS:
            facts += [Fact(subject, template.format(*map(_clean, m.groups()))) for m in pattern.finditer(text)]
    return facts


_MODEL_PROMPT = (
    "List the facts the user states about themselves in this message, one per line, as 'subject | fact'. "
    "Write NONE if there are none.\n\nMessage: {text}"
)


def model_facts(base: Any, turns: Sequence[tuple[str, str]], *, max_new_tokens: int = 48) -> list[Fact]:
    """Facts the base model extracts from the user's turns (``subject | fact`` lines; others are ignored)."""
    users = [text for role, text in turns if role == "user" and text.strip()]
    if not users:
        return []
    gens = base.generate([_MODEL_PROMPT.format(text=t) for t in users], max_new_tokens=max_new_tokens)
    facts = []
    for gen in gens:
        for line in gen.text.splitlines():
            subject, sep, fact = line.partition("|")
            subject, fact = subject.strip(" -*\t").lower(), fact.strip()
            if sep and subject and fact and subject != "none":
                facts.append(Fact(subject[:80], fact))
    return facts


def fact_document_id(subject: str) -> str:
    """``facts/<slug>`` of a subject: lower-case words joined by ``-``.

    >>> fact_document_id("Favourite colour")
    'facts/favourite-colour'
    """
    slug = "-".join(re.findall(r"[a-z0-9]+", subject.lower()))[:120]
    if not slug:
        raise ValidationError(f"fact subject {subject!r} has no letters or digits")
    return FACTS + slug


Extractor = Callable[[Sequence[tuple[str, str]]], Iterable[Fact]]


# ============================================================================ the service
class ConversationMemory:
    """Transcripts and facts, kept as documents of a :class:`DocumentStore`.

    Args:
        documents: where transcripts and facts are written.
        base_model: a function returning the base model (loaded only for ``extract="model"``).
    """

    def __init__(self, documents: DocumentStore, base_model: Callable[[], Any]) -> None:
        self.documents = documents
        self.base_model = base_model

    def _extractor(self, extract: str | Extractor | None) -> Extractor | None:
        if extract is None or extract == "none":
            return None
        if extract == "rules":
            return rule_facts
        if extract == "model":
            return lambda turns: model_facts(self.base_model(), turns)
        if callable(extract):
            return extract
        raise ValidationError(f"extract must be None, 'rules', 'model' or a function of the turns, got {extract!r}")

    def add(
        self,
        messages: Iterable[Any],
        *,
        session: str,
        namespace: str | None = None,
        extract: str | Extractor | None = None,
        index_transcript: bool | None = None,
    ) -> ConversationResult:
        """See :meth:`memory.api.ParametricMemory.add_conversation`."""
        turns = normalise_turns(messages)
        doc_id = validate_document_id(TRANSCRIPTS + session) if isinstance(session, str) else None
        if doc_id is None:
            raise ValidationError(f"session must be a string, got {type(session).__name__}")
        extractor = self._extractor(extract)
        facts = list(extractor(turns)) if extractor is not None else []  # before anything is written
        for f in facts:
            if not isinstance(f, Fact) or not f.text.strip():
                raise ValidationError(f"an extractor returns Fact(subject, text) with a text, got {f!r}")
            fact_document_id(f.subject)
        index = index_transcript if index_transcript is not None else extractor is None
        ns = self.documents.records.namespace(namespace)
        with _LOCKS[hash((ns, doc_id)) % len(_LOCKS)]:  # read, append, write: one call at a time per session
            try:
                before = self.documents.get(doc_id, namespace=ns, with_text=True).text or ""
            except NotFoundError:
                before = ""
            text = (before + "\n" if before else "") + render_turns(turns)
            transcript = self.documents.add(
                text,
                document_id=doc_id,
                namespace=ns,
                title=f"Conversation {session}",
                metadata={"kind": "conversation", "session": session, "turns": len(parse_transcript(text))},
                chunks=None if index else [],
            )
        version = transcript.document.version.number if transcript.document and transcript.document.version else None
        results = [
            self.documents.add(
                f.text,
                document_id=fact_document_id(f.subject),
                namespace=ns,
                title=f.subject,
                metadata={"kind": "fact", "subject": f.subject, "session": session, "transcript_version": version},
            )
            for f in _last_per_subject(facts)
        ]
        superseded = [r.document.id for r in results if r.status == "new_version" and r.document]
        if superseded:
            log.info("conversation %s: superseded %s", session, ", ".join(superseded))
        return ConversationResult(session=session, transcript=transcript, facts=results)

    def transcript(self, session: str, *, namespace: str | None = None) -> list[tuple[str, str]]:
        """The turns of a session so far (``[]`` for a session never added to)."""
        try:
            info = self.documents.get(validate_document_id(TRANSCRIPTS + session), namespace=namespace, with_text=True)
        except NotFoundError:
            return []
        return parse_transcript(info.text or "")


def _last_per_subject(facts: Sequence[Fact]) -> list[Fact]:
    """One fact per subject (the last stated), in order of first mention."""
    last: dict[str, Fact] = {}
    for f in facts:
        last[fact_document_id(f.subject)] = f
    return list(last.values())


__all__ = [
    "ConversationMemory",
    "ConversationResult",
    "Fact",
    "fact_document_id",
    "model_facts",
    "normalise_turns",
    "parse_transcript",
    "render_turns",
    "rule_facts",
]
