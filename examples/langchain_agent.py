"""A LangChain agent whose long-term memory is a ParametricMemory.

The agent has one tool, ``parametric_memory``, which answers from the documents stored in the memory:
from the adapters the documents were internalized into, from classic retrieval, or both, as the router
decides (``mode="auto"``). The tool returns the answer, and its artifact says how it was produced.

The embedded 135M base model cannot emit tool calls, so this agent's policy is fixed: every user question
goes to the memory tool (the agent writes the tool call itself). With a tool-calling chat model, replace
``plan`` by ``model.bind_tools([tool]).invoke(messages)``; the rest of the loop is unchanged.

Run: ``python examples/langchain_agent.py "What is the office vault code?"``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import uuid
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from integrations.langchain import ParametricMemoryVectorStore
from memory import ParametricMemory

NAMESPACE = "handbook"
HANDBOOK = {
    "vault": ("The office vault code is 7342.", {"topic": "security"}),
    "leave": ("Employees get 25 days of paid leave per year.", {"topic": "hr"}),
    "laptops": ("Laptops are replaced every three years.", {"topic": "it"}),
}
INTERNALIZED = ("vault",)


def build_memory(home: str | None = None) -> ParametricMemoryVectorStore:
    """The handbook in a memory (under ``home``), its vault page internalized into an adapter (idempotent)."""
    mem = ParametricMemory(home=home or tempfile.mkdtemp(prefix="pmem-example-"))
    store = ParametricMemoryVectorStore(mem, namespace=NAMESPACE)
    store.add_texts([t for t, _ in HANDBOOK.values()], metadatas=[m for _, m in HANDBOOK.values()], ids=list(HANDBOOK))
    for doc_id in INTERNALIZED:
        mem.internalize(doc_id, namespace=NAMESPACE)
    return store


def plan(messages: list[BaseMessage]) -> AIMessage:
    """The agent's policy: answer a new user question by asking the memory; answer with the tool's result."""
    last = messages[-1]
    if isinstance(last, HumanMessage):
        call = {
            "name": "parametric_memory",
            "args": {"question": last.text},
            "id": f"call-{uuid.uuid4().hex[:8]}",
            "type": "tool_call",
        }
        return AIMessage(content="", tool_calls=[call])
    assert isinstance(last, ToolMessage)
    return AIMessage(content=last.text)


def main(
    question: str = "What is the office vault code?",
    *,
    home: str | None = None,
    mode: str = "auto",
    max_new_tokens: int = 24,
) -> dict[str, Any]:
    """Run the agent on ``question``; returns the answer, the mode and reason of the memory, and the transcript."""
    store = build_memory(home)
    tool = store.as_tool(mode=mode, max_new_tokens=max_new_tokens)
    messages: list[BaseMessage] = [HumanMessage(question)]
    artifact: dict[str, Any] = {}
    while True:
        step = plan(messages)
        messages.append(step)
        if not step.tool_calls:
            break
        for call in step.tool_calls:
            result = tool.invoke(call)  # a ToolMessage: content for the model, artifact for the program
            artifact = result.artifact
            messages.append(result)
    return {
        "answer": artifact["answer"],
        "mode": artifact["mode"],
        "reason": artifact["reason"],
        "adapters": [a["document_id"] for a in artifact["adapters"]],
        "transcript": [f"{m.type}: {m.text or m.tool_calls}" for m in messages],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is the office vault code?")
    parser.add_argument("--mode", default="auto", choices=["auto", "parametric", "retrieval", "hybrid"])
    parser.add_argument("--home", default=None, help="PMEM home (default: a temporary directory)")
    args = parser.parse_args()
    print(json.dumps(main(args.question, home=args.home, mode=args.mode), indent=2))
