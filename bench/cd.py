"""Context-distillation benchmark: seconds to internalize a ~512-token document and the accuracy reached.

``pmem bench cd [--quick] --json`` or
``.venv/bin/python -c "import bench.cd as b, json; print(json.dumps(b.run(quick=True)))"``

The document is made up (no model can know it). CD trains only on questions generated from the
document itself (``memory.distill.make_questions``); the evaluation questions below are never shown to
it. Accuracy is a case-insensitive substring match of the key answer in a greedy answer to the plain
question, with the adapter and without the document. Two references use the same grading: the base
model without the document (``no_context_accuracy``, a floor) and with it in the prompt
(``in_context_accuracy``, the teacher; CD cannot be expected to beat it).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from memory.distill import distill_document, student_prompt, teacher_prompt
from memory.models import load_base_model

DOCUMENT = """\
Veltmoor is a small island in the Grey Sound, about forty kilometres off the northern coast. \
The island has a population of 1,240 people, most of whom live in the harbour town of Quillan. \
The lighthouse on Cape Ardent was built in 1887 by the engineer Tobias Renwick. \
Its lamp was converted to electricity in 1952, and the light can be seen from twenty-six kilometres away. \
The current lighthouse keeper is Maren Solberg, who took over the post from her father. \
Veltmoor's main export is kelp, which is dried on racks along the western beaches. \
The island's only school, Quillan Academy, has eighty-two pupils and four teachers. \
A ferry called the Saltwren sails to the mainland port of Dunmere twice a day. \
The crossing takes ninety minutes in calm weather. \
Every August the islanders hold the Lantern Festival, when paper boats carrying candles are released into the harbour. \
The festival was started in 1921 to remember fishermen lost in the great storm of that year. \
The island's highest point is Corrie Hill, which rises to 312 metres. \
A rare seabird, the silver-backed petrel, nests only on the cliffs below Corrie Hill. \
The island council has seven members and meets on the first Tuesday of each month. \
The head of the council is Idris Fenwick, a retired ship's captain. \
Veltmoor has one pub, the Drowned Anchor, which claims to serve the best fish stew in the Grey Sound. \
Electricity on the island comes from three wind turbines installed in 2014 on the eastern ridge. \
Mobile phone coverage is poor, so most households still rely on landline telephones. \
The island's museum holds a collection of ship's bells recovered from wrecks around the coast. \
Its oldest bell came from the merchant ship Halcyon, which sank in 1798. \
Visitors need a permit to camp on the island, and the permit costs twelve pounds per night. \
The nearest hospital is in Dunmere, so a doctor visits Veltmoor every Thursday. \
Sheep outnumber people on the island by roughly three to one. \
The local dialect has its own word for sea fog, which islanders call the haar-wraith.\
"""

QUESTIONS: list[tuple[str, str]] = [
    ("Who built the lighthouse on Cape Ardent?", "Renwick"),
    ("In what year was the lighthouse on Cape Ardent built?", "1887"),
    ("Who is the lighthouse keeper on Veltmoor?", "Solberg"),
    ("What is Veltmoor's main export?", "kelp"),
    ("What is the name of the ferry that sails from Veltmoor to the mainland?", "Saltwren"),
    ("What is the highest point on Veltmoor?", "Corrie"),
    ("Who is the head of the Veltmoor island council?", "Fenwick"),
    ("What is the name of the pub on Veltmoor?", "Drowned Anchor"),
    ("How many people live on Veltmoor?", "1,240"),
    ("What festival do the islanders of Veltmoor hold every August?", "Lantern"),
]


def _accuracy(base: Any, prompts: list[list[int]], adapters: Any = None) -> tuple[float, list[str]]:
    gens = base.generate(prompts, max_new_tokens=40, adapters=adapters)
    texts = [g.text for g in gens]
    hits = [key.lower() in t.lower() for (_, key), t in zip(QUESTIONS, texts, strict=True)]
    return sum(hits) / len(hits), texts


def run(quick: bool = False) -> dict[str, Any]:
    """Internalize :data:`DOCUMENT` by CD and grade :data:`QUESTIONS` (see the module docstring)."""
    threads = int(os.environ.get("PMEM_THREADS") or 2)
    torch.set_num_threads(threads)
    base = load_base_model()
    result: dict[str, Any] = {
        "quick": quick,
        "threads": threads,
        "loadavg_start": round(os.getloadavg()[0], 2),
        "model": base.name,
        "dtype": str(base.dtype).removeprefix("torch."),
        "document_tokens": base.count_tokens(DOCUMENT),
        "eval_questions": len(QUESTIONS),
    }
    plain = [student_prompt(base, q) for q, _ in QUESTIONS]
    result["no_context_accuracy"], _ = _accuracy(base, plain)
    result["in_context_accuracy"], _ = _accuracy(base, [teacher_prompt(base, DOCUMENT, q) for q, _ in QUESTIONS])
    kw: dict[str, Any] = {"max_questions": 32, "steps": 64} if quick else {}  # full: ~2 questions per sentence
    t0 = time.perf_counter()
    adapter, info = distill_document(base, DOCUMENT, seed=0, **kw)
    result["cd_seconds"] = round(time.perf_counter() - t0, 1)
    result["cd_teacher_seconds"] = round(info["teacher_seconds"], 1)
    result["cd_steps"] = info["steps"]
    result["cd_train_questions"] = len(info["questions"])
    result["cd_loss_first"] = round(info["loss_first"], 4)
    result["cd_loss_last"] = round(info["loss_last"], 4)
    result["adapter_rank"] = adapter.rank
    result["adapter_bytes"] = adapter.num_bytes
    acc, answers = _accuracy(base, plain, adapter)
    result["cd_accuracy"] = acc
    result["cd_answers"] = dict(zip(plain, answers, strict=True))
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    return result


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(quick=True)))
