"""Conversation memory over HTTP: ``/v1/namespaces/{ns}/conversations/{session}`` (see
:mod:`memory.services.conversations`).

``POST`` appends turns to the session's transcript (and, with ``extract``, keeps the facts they state; a fact
about a known subject supersedes the old one as a new version): 201 with the transcript's and each fact's
add result and the ids of the facts superseded. ``GET`` returns the session's turns. The routes use the API's
key check (``write`` to add, ``read`` to read), so a key outside the namespace gets the same 403 as anywhere.
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from memory.services.conversations import MAX_TURNS


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(description="system, user, assistant or tool (human / ai are accepted).")
    content: str


class AddConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[Turn] = Field(min_length=1, max_length=MAX_TURNS)
    extract: Literal["rules", "model"] | None = Field(
        default=None, description="Keep the facts the user states: by rules, or as the base model extracts them."
    )


def conversations_router(amem: Any, allow: Any) -> APIRouter:
    """The routes over ``amem`` (the server's :class:`~memory.aio.AsyncParametricMemory`); ``allow(role)`` is
    the server's namespace-and-role dependency."""
    router = APIRouter(prefix="/v1/namespaces/{namespace}/conversations", tags=["conversations"])
    Read = Annotated[str, allow("read")]  # noqa: N806 - dependency aliases, as in create_app
    Write = Annotated[str, allow("write")]  # noqa: N806

    @router.post("/{session:path}", status_code=201)
    async def add_conversation(ns: Write, session: str, body: AddConversation) -> dict[str, Any]:
        """Append turns to the session's transcript; with ``extract``, keep the facts they state."""
        mem = amem.memory
        turns = [t.model_dump() for t in body.messages]
        run = amem.run_model if body.extract == "model" else amem.run_io  # the model waits in the queue
        r = await run(mem.add_conversation, turns, session=session, namespace=ns, extract=body.extract)
        return {**r.to_dict(), "superseded": r.superseded}

    @router.get("/{session:path}")
    async def conversation(ns: Read, session: str) -> dict[str, Any]:
        """The session's turns so far (none for a session never added to)."""
        turns = await amem.run_io(amem.memory.conversations.transcript, session, namespace=ns)
        return {"session": session, "messages": [{"role": r, "content": c} for r, c in turns]}

    return router


__all__ = ["conversations_router"]
