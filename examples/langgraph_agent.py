"""A LangGraph agent that remembers across threads: long-term memory in a ParametricMemoryStore.

Each conversation is a thread (its messages are checkpointed per thread); what the user asks the agent to
remember goes into the store under ``("memories", <user>)``, so another thread of the same user recalls it and
a thread of another user does not. The reply is built from the best memory the store finds (a deterministic
stand-in for a chat model, so the example runs in the test suite); with ``--model`` the embedded base model
answers with the memories as context.

Run: ``python examples/langgraph_agent.py`` (or ``--model``; the memory lives in ``--home``, default a temp dir).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import uuid
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.store.base import BaseStore

from integrations.langgraph import ParametricMemoryStore
from memory import ParametricMemory

REMEMBER = re.compile(r"^\s*remember(?: that)?\s+(?P<fact>.+?)\s*\.?\s*$", re.IGNORECASE)


def build_graph(store: BaseStore, *, chat_model: Any = None) -> Any:
    """The agent: one node that stores "remember ..." requests and answers other messages from memory."""

    def agent(state: MessagesState, config: RunnableConfig, *, store: BaseStore) -> dict[str, Any]:
        user = config["configurable"]["user_id"]
        text = str(state["messages"][-1].content)
        space = ("memories", user)
        if m := REMEMBER.match(text):
            store.put(space, uuid.uuid4().hex, {"text": m["fact"]})
            return {"messages": [AIMessage(f"Noted: {m['fact']}.")]}
        found = store.search(space, query=text, limit=3)
        if not found:
            return {"messages": [AIMessage("I don't know anything about that yet.")]}
        if chat_model is None:
            return {"messages": [AIMessage(f"You told me: {found[0].value['text']}.")]}
        context = "\n".join(f"- {item.value['text']}" for item in found)
        reply = chat_model.invoke([("human", f"What I told you before:\n{context}\n\n{text}")])
        return {"messages": [reply]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    return builder.compile(checkpointer=InMemorySaver(), store=store)


def ask(graph: Any, text: str, *, thread: str, user: str) -> str:
    config = {"configurable": {"thread_id": thread, "user_id": user}}
    out = graph.invoke({"messages": [HumanMessage(text)]}, config)
    return str(out["messages"][-1].content)


def main(home: str | None = None, *, use_model: bool = False) -> dict[str, Any]:
    memory = ParametricMemory(home=home or tempfile.mkdtemp(prefix="pmem-langgraph-"))
    store = ParametricMemoryStore(memory, namespace="agent", index={"fields": ["text"]})
    chat_model = None
    if use_model:
        from integrations.langchain import ParametricChatModel

        chat_model = ParametricChatModel(memory=memory, max_tokens=32)
    graph = build_graph(store, chat_model=chat_model)
    transcript = {
        "thread-1": [ask(graph, "Remember that my favourite tea is jasmine.", thread="thread-1", user="ada")],
        "thread-2": [ask(graph, "Which tea do I like?", thread="thread-2", user="ada")],
        "thread-3": [ask(graph, "Which tea do I like?", thread="thread-3", user="bob")],
    }
    checkpointed = graph.get_state({"configurable": {"thread_id": "thread-2"}}).values["messages"]
    return {
        "transcript": transcript,
        "thread_2_messages": len(checkpointed),
        "namespaces": store.list_namespaces(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=None, help="PMEM home (default: a new temporary directory)")
    parser.add_argument("--model", action="store_true", help="answer with the embedded base model")
    args = parser.parse_args()
    for thread, replies in main(args.home, use_model=args.model)["transcript"].items():
        print(thread, "->", replies[-1])
