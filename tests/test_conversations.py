"""Conversation memory: transcripts as versioned documents, facts that supersede (never delete) earlier ones.

Run: ``.venv/bin/python -m pytest tests/test_conversations.py -q`` (``-m "not slow"`` skips the 50-turn
conversation answered by the real base model).
"""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from memory.errors import ValidationError
from memory.services.conversations import Fact, normalise_turns, parse_transcript, render_turns, rule_facts


@pytest.mark.parametrize(
    "text",
    ["plain", "two\nlines", "back\\slash and \\n literal", "trailing colon:", "", "ünïcode ✓", "a\r\nb"],
)
def test_transcript_lines_round_trip(text: str) -> None:
    turns = [("user", text), ("assistant", "ok")]
    assert parse_transcript(render_turns(turns)) == [("user", text.replace("\r\n", "\n")), ("assistant", "ok")]


def test_rule_facts() -> None:
    facts = rule_facts(
        [
            ("user", "Hello! My name is Ada and my favorite colour is blue."),
            ("assistant", "My favourite colour is red."),  # the assistant's words are not the user's facts
            ("user", "I live in Paris, and I'm allergic to peanuts. My cats are Tom and Kit."),
            ("user", "Actually, my favourite colour is green now."),
        ]
    )
    assert facts == [
        Fact("name", "The user's name is Ada."),
        Fact("favourite colour", "The user's favourite colour is blue."),
        Fact("cats", "The user's cats are Tom and Kit."),
        Fact("home", "The user lives in Paris."),
        Fact("allergy", "The user is allergic to peanuts."),
        Fact("favourite colour", "The user's favourite colour is green."),
    ]


def test_turns_from_message_objects_and_bad_input() -> None:
    messages = [SystemMessage("be brief"), HumanMessage("hi"), AIMessage([{"type": "text", "text": "yo"}])]
    turns = normalise_turns(messages)
    assert turns == [("system", "be brief"), ("user", "hi"), ("assistant", "yo")]
    for bad in [[], [("narrator", "x")], [{"role": "user", "content": 3}], ["just a string"]]:
        with pytest.raises(ValidationError):
            normalise_turns(bad)


def test_a_changed_fact_supersedes_the_old_one_as_a_new_version(mem) -> None:
    first = mem.add_conversation(
        [("user", "My favourite colour is blue."), ("assistant", "Blue it is.")], session="s1", extract="rules"
    )
    assert first.transcript.status == "created" and [f.status for f in first.facts] == ["created"]
    again = mem.add_conversation([("user", "As I said, my favourite colour is blue.")], session="s1", extract="rules")
    assert [f.status for f in again.facts] == ["unchanged"] and again.superseded == []
    changed = mem.add_conversation(
        [("user", "Actually my favourite colour is green now.")], session="s2", extract="rules"
    )  # another session of the same namespace: the same subject
    assert changed.superseded == ["facts/favourite-colour"]
    current = mem.get("facts/favourite-colour", with_text=True)
    assert current.text == "The user's favourite colour is green." and current.metadata["session"] == "s2"
    history = mem.history("facts/favourite-colour")
    assert [v.number for v in history] == [1, 2] and history[-1].is_current
    assert mem.get("facts/favourite-colour", version=1, with_text=True).text == "The user's favourite colour is blue."
    assert "-The user's favourite colour is blue." in mem.diff("facts/favourite-colour", 1)
    # transcripts: one document per session, a version per call, the record of every turn
    assert [v.number for v in mem.history("conversations/s1")] == [1, 2]
    assert mem.conversations.transcript("s1")[-1] == ("user", "As I said, my favourite colour is blue.")
    assert mem.get("conversations/s1").metadata == {"kind": "conversation", "session": "s1", "turns": 3}
    assert mem.chunks("conversations/s1") == []  # with facts, only the facts are searched
    hits = mem.search("favourite colour", k=5)
    assert {h.document_id for h in hits} == {"facts/favourite-colour"} and "green" in hits[0].text


def test_without_facts_the_transcript_is_searched(mem) -> None:
    mem.add_conversation([("user", "The launch is on Tuesday.")], session="plan")
    assert [h.document_id for h in mem.search("launch Tuesday", k=2)] == ["conversations/plan"]
    assert mem.adapters() == [] and mem.list(prefix="facts/") == []


def test_custom_extractor_and_bad_extractors_write_nothing(mem) -> None:
    r = mem.add_conversation([("user", "x")], session="c", extract=lambda turns: [Fact("Mood", "The user is happy.")])
    assert [f.document.id for f in r.facts] == ["facts/mood"]
    for bad in [lambda turns: ["not a fact"], lambda turns: [Fact("!!!", "no subject")], "telepathy"]:
        with pytest.raises(ValidationError):
            mem.add_conversation([("user", "y")], session="bad", extract=bad)
    assert mem.conversations.transcript("bad") == []
    with pytest.raises(ValidationError):
        mem.add_conversation([("user", "z")], session="../escape")


@pytest.mark.slow
def test_fifty_turns_with_a_changed_preference(tmp_path) -> None:
    """50 turns; the favourite colour changes at turn 39: auto answers give the new one, history the old."""
    from memory import ParametricMemory

    mem = ParametricMemory(home=str(tmp_path / "home"))
    topics = ["the weather", "my commute", "a book I read", "dinner plans", "the weekend", "a film", "work"]
    turns: list[tuple[str, str]] = []
    for i in range(25):  # 25 user turns, 25 assistant turns
        if i == 2:
            said = "By the way, my favourite colour is blue."
        elif i == 19:
            said = "I have changed my mind: my favourite colour is green now."
        else:
            said = f"Let me tell you about {topics[i % len(topics)]}, part {i}."
        turns += [("user", said), ("assistant", f"Thanks for telling me, noted ({i}).")]
    assert len(turns) == 50
    for start in range(0, 50, 10):  # added as the conversation goes, ten turns at a time
        mem.add_conversation(turns[start : start + 10], session="chat-1", extract="rules")

    answer = mem.query("What is my favourite colour?", mode="auto", max_new_tokens=16)
    assert "green" in answer.answer.lower() and "blue" not in answer.answer.lower(), answer
    assert {c.document_id for c in answer.chunks} <= {"facts/favourite-colour"}
    old, new = (mem.get("facts/favourite-colour", version=n, with_text=True).text for n in (1, 2))
    assert "blue" in old and "green" in new
    assert len(mem.conversations.transcript("chat-1")) == 50
    assert len(mem.history("conversations/chat-1")) == 5


def test_langchain_chat_history(mem) -> None:
    from integrations.langchain import ParametricChatMessageHistory

    history = ParametricChatMessageHistory(mem, "lc", extract="rules")
    history.add_messages([HumanMessage("My favourite drink is tea."), AIMessage("Tea, noted.")])
    history.add_user_message("Actually my favourite drink is coffee.")
    assert [(type(m).__name__, m.content) for m in history.messages] == [
        ("HumanMessage", "My favourite drink is tea."),
        ("AIMessage", "Tea, noted."),
        ("HumanMessage", "Actually my favourite drink is coffee."),
    ]
    assert [v.number for v in mem.history("facts/favourite-drink")] == [1, 2]
    history.clear()
    assert history.messages == [] and mem.get("facts/favourite-drink").version.number == 2


def test_llamaindex_memory_block_with_a_session(mem) -> None:
    import asyncio

    from llama_index.core.base.llms.types import ChatMessage, MessageRole

    from integrations.llamaindex import ParametricMemoryBlock

    block = ParametricMemoryBlock(memory=mem, session="li", extract="rules")
    said = [
        ChatMessage(role=MessageRole.USER, content="I live in Lyon."),
        ChatMessage(role=MessageRole.ASSISTANT, content="Lovely city."),
    ]
    asyncio.run(block.aput(said))
    asyncio.run(block.aput([ChatMessage(role=MessageRole.USER, content="I now live in Oslo.")]))
    assert mem.conversations.transcript("li") == [
        ("user", "I live in Lyon."),
        ("assistant", "Lovely city."),
        ("user", "I now live in Oslo."),
    ]
    assert mem.get("facts/home", with_text=True).text == "The user lives in Oslo."
    assert mem.get("facts/home", version=1, with_text=True).text == "The user lives in Lyon."


def test_over_http(mem) -> None:
    """POST/GET /v1/namespaces/{ns}/conversations/{session} with the API's key checks."""
    from fastapi.testclient import TestClient

    from memory.server.app import create_app

    app = create_app(mem, auth=True)
    writer = app.state.keys.create("w", role="write", namespaces=["alpha"]).secret
    other = app.state.keys.create("o", role="write", namespaces=["beta"]).secret
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {writer}"}
    body = {"messages": [{"role": "human", "content": "I work at Acme."}], "extract": "rules"}
    r = client.post("/v1/namespaces/alpha/conversations/s1", json=body, headers=auth)
    assert r.status_code == 201 and r.json()["facts"][0]["document"]["id"] == "facts/work"
    denied = client.post(
        "/v1/namespaces/alpha/conversations/s1", json=body, headers={"Authorization": f"Bearer {other}"}
    )
    assert denied.status_code == 403
    bad = client.post(
        "/v1/namespaces/alpha/conversations/s1", json={"messages": [{"role": "x", "content": "y"}]}, headers=auth
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
    unknown = client.post("/v1/namespaces/alpha/conversations/s1", json={**body, "extra": 1}, headers=auth)
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_field"

    r = client.post(
        "/v1/namespaces/alpha/conversations/s1",
        json={"messages": [{"role": "user", "content": "I now work for Initech."}], "extract": "rules"},
        headers=auth,
    )
    assert r.json()["superseded"] == ["facts/work"] and r.json()["transcript"]["status"] == "new_version"
    got = client.get("/v1/namespaces/alpha/conversations/s1", headers=auth).json()
    assert got["messages"] == [
        {"role": "user", "content": "I work at Acme."},
        {"role": "user", "content": "I now work for Initech."},
    ]
    assert mem.get("facts/work", namespace="alpha", version=1, with_text=True).text == "The user works at Acme."


def test_remote_memory_add_conversation(tmp_path) -> None:
    """RemoteMemory.add_conversation against a real server process."""
    from _server import ServerProcess, server_env

    from memory.client import RemoteMemory

    server = ServerProcess(server_env(tmp_path / "srv", PMEM_TEST_NO_AUTH="1"), tmp_path / "server.log").wait_ready()
    try:
        with RemoteMemory(server.url, namespace="alpha") as remote:
            first = remote.add_conversation([HumanMessage("My car is a red Fiat.")], session="road", extract="rules")
            assert [f.document.id for f in first.facts] == ["facts/car"] and first.superseded == []
            second = remote.add_conversation([("user", "My car is now a blue Volvo.")], session="road", extract="rules")
            assert second.superseded == ["facts/car"]
            assert [v.number for v in remote.history("facts/car")] == [1, 2]
            with pytest.raises(ValidationError):  # a function extracts in-process only
                remote.add_conversation([("user", "x")], session="road", extract=lambda turns: [])
    finally:
        server.stop()


def test_langgraph_store_records_a_thread(mem) -> None:
    from integrations.langgraph import ParametricMemoryStore

    store = ParametricMemoryStore(mem, namespace="agent")
    store.add_conversation([HumanMessage("My plan is the annual one.")], session="thread-7", extract="rules")
    r = store.add_conversation([HumanMessage("My plan is now the monthly one.")], session="thread-7", extract="rules")
    assert r.superseded == ["facts/plan"]
    last = mem.conversations.transcript("thread-7", namespace="agent")[-1]
    assert last == ("user", "My plan is now the monthly one.")
    assert store.list_namespaces() == []  # memory documents, not store items


def test_model_facts_parse_subject_lines() -> None:
    """extract="model": the base model's `subject | fact` lines become facts; other lines are ignored."""
    from types import SimpleNamespace

    from memory.services.conversations import model_facts

    class Scripted:  # answers the extraction prompt as a model might
        def __init__(self) -> None:
            self.prompts: list[str] = []

        def generate(self, prompts: list[str], *, max_new_tokens: int) -> list[SimpleNamespace]:
            self.prompts += prompts
            return [SimpleNamespace(text="- Favourite Colour | The user likes green.\nnoise\nNONE | x\n| no subject")]

    base = Scripted()
    facts = model_facts(base, [("assistant", "ignored"), ("user", "I like green."), ("user", "  ")])
    assert facts == [Fact("favourite colour", "The user likes green.")]
    assert len(base.prompts) == 1 and "I like green." in base.prompts[0]
    assert model_facts(base, [("assistant", "only the assistant")]) == []


def test_concurrent_calls_on_one_session_lose_no_turn(mem) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def talk(i: int) -> None:
        for j in range(4):
            mem.add_conversation([("user", f"speaker {i} line {j}")], session="busy")

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(talk, range(6)))
    said = mem.conversations.transcript("busy")
    assert sorted(t for _, t in said) == sorted(f"speaker {i} line {j}" for i in range(6) for j in range(4))
