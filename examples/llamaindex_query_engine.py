"""A LlamaIndex query engine that answers from a ParametricMemory.

The retriever asks the memory (adapters, retrieval or both, as the router decides with ``mode="auto"``);
the response synthesizer is ``ParametricLLM``, the same base model, asked with the memory's own reading
prompt (:func:`memory.prompts.context_prompt`: the prompt the retrieval path uses; LlamaIndex's default one
loses a small model). Every source node says which mode produced it and why.

Run: ``python examples/llamaindex_query_engine.py "What is the office vault code?"``
"""

from __future__ import annotations

import argparse
import json
import tempfile
from typing import Any

from llama_index.core import PromptTemplate, StorageContext, VectorStoreIndex
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

from integrations.llamaindex import (
    DeferredEmbedding,
    ParametricLLM,
    ParametricMemoryRetriever,
    ParametricMemoryVectorStore,
)
from memory import ParametricMemory, prompts

NAMESPACE = "handbook"
HANDBOOK = {
    "vault": ("The office vault code is 7342.", {"topic": "security"}),
    "leave": ("Employees get 25 days of paid leave per year.", {"topic": "hr"}),
    "laptops": ("Laptops are replaced every three years.", {"topic": "it"}),
}
INTERNALIZED = ("vault",)
# LlamaIndex fills in the retrieved text (the recollection, or passages) and the question
QA_TEMPLATE = PromptTemplate(prompts.context_prompt("{query_str}", ["{context_str}"]))


def build_memory(home: str | None = None) -> ParametricMemory:
    """The handbook indexed through LlamaIndex into a memory, its vault page internalized (both idempotent).

    Each page is one node, and each node one memory document (its id is the node id).
    """
    mem = ParametricMemory(home=home or tempfile.mkdtemp(prefix="pmem-example-"))
    store = ParametricMemoryVectorStore(mem, namespace=NAMESPACE)
    nodes = [
        TextNode(
            id_=page, text=text, metadata=meta, relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=page)}
        )
        for page, (text, meta) in HANDBOOK.items()
    ]
    VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=DeferredEmbedding()
    )
    for page in INTERNALIZED:
        mem.internalize(page, namespace=NAMESPACE)
    return mem


def main(
    question: str = "What is the office vault code?",
    *,
    home: str | None = None,
    mode: str = "auto",
    max_new_tokens: int = 24,
) -> dict[str, Any]:
    """Ask ``question`` through the query engine; returns the answer and the memory's mode and reason."""
    mem = build_memory(home)
    retriever = ParametricMemoryRetriever(
        mem, namespace=NAMESPACE, mode=mode, similarity_top_k=2, max_new_tokens=max_new_tokens
    )
    engine = RetrieverQueryEngine.from_args(
        retriever,
        llm=ParametricLLM(memory=mem, max_new_tokens=max_new_tokens, system=prompts.QA_SYSTEM),
        response_mode="compact",
        text_qa_template=QA_TEMPLATE,
    )
    response = engine.query(question)
    meta = response.source_nodes[0].node.metadata if response.source_nodes else {"mode": "none", "reason": "no source"}
    return {
        "answer": str(response).strip(),
        "mode": meta["mode"],
        "reason": meta["reason"],
        "sources": [n.node.get_content()[:80] for n in response.source_nodes],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is the office vault code?")
    parser.add_argument("--mode", default="auto", choices=["auto", "parametric", "retrieval", "hybrid"])
    parser.add_argument("--home", default=None, help="PMEM home (default: a temporary directory)")
    args = parser.parse_args()
    print(json.dumps(main(args.question, home=args.home, mode=args.mode), indent=2))
