"""Classic retrieval over the same chunks the adapters are made from: embeddings and a vector index.

- :mod:`memory.retrieval.embeddings`: :class:`Embedder` protocol, the bundled all-MiniLM-L6-v2
  (:class:`MiniLMEmbedder`), and :func:`as_embedder` for LangChain / LlamaIndex embedding models.
- :mod:`memory.retrieval.index`: :class:`VectorIndex` (hard namespace partitions, exact numpy search
  for small collections, usearch HNSW for large ones), :class:`Hit`.
- :mod:`memory.retrieval.filters`: the metadata filter language and its validation.

The module is database-agnostic: the caller gives ids, vectors and metadata (for instance rebuilt from
the ``chunks.embedding`` float32 blobs with :func:`vectors_from_bytes`) and gets :class:`Hit` lists back.

>>> import numpy as np
>>> idx = VectorIndex(dim=2)
>>> idx.add(["c1"], np.array([[0.6, 0.8]], dtype=np.float32), [{"doc": "d1"}], namespace="acme")
>>> idx.search([0.6, 0.8], k=1, namespace="acme")[0].id
'c1'
"""

from memory.retrieval.embeddings import (
    Embedder,
    LangChainEmbedder,
    LlamaIndexEmbedder,
    MiniLMEmbedder,
    as_embedder,
    vector_from_bytes,
    vector_to_bytes,
    vectors_from_bytes,
)
from memory.retrieval.filters import compile_filter, validate_filter
from memory.retrieval.index import AnnParams, Hit, VectorIndex, usearch_available

__all__ = [
    "AnnParams",
    "Embedder",
    "Hit",
    "LangChainEmbedder",
    "LlamaIndexEmbedder",
    "MiniLMEmbedder",
    "VectorIndex",
    "as_embedder",
    "compile_filter",
    "usearch_available",
    "validate_filter",
    "vector_from_bytes",
    "vector_to_bytes",
    "vectors_from_bytes",
]
