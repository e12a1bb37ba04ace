"""The prompt formats used to ask the base model, in one place.

The parametric format (no document in the prompt) must match the one the Doc-to-LoRA hypernetwork
was meta-trained with; the in-context format is the teacher's and the retrieval path's.
"""

from __future__ import annotations

from collections.abc import Sequence

QA_SYSTEM = "Answer briefly."


def parametric_prompt(question: str) -> str:
    """The user turn when the knowledge lives in the applied adapters."""
    return question.strip()


def context_prompt(question: str, passages: Sequence[str]) -> str:
    """The user turn with retrieved passages (or a whole document) in the prompt."""
    text = "\n\n".join(p.strip() for p in passages if p.strip())
    return f"Read the text and answer the question.\n\nText:\n{text}\n\nQuestion: {question.strip()}"
