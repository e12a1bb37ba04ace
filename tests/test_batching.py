"""Continuous batching (memory.models.batching) and the generation queue that feeds it (memory.aio).

The scheduler's rows must compute what one-at-a-time generation computes: every test compares texts and tokens
row by row with ``BaseModel.generate`` on one prompt. Float32 throughout: in bfloat16 the CPU's matrix kernels
round differently for 8 rows than for 1 even without any padding (the same prompt 8 times in one plain
``generate`` call drifts from the single call on 2 of 8 SmolLM2 prompts within 24 tokens), so exact equality
is a float32 property; the module docstring of memory.models.batching says so.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from _fixtures_models import rand_adapter, tiny_base  # tests/ is on sys.path

from memory.aio import AsyncParametricMemory, BusyError, GenerationQueue
from memory.lora import concat
from memory.models.batching import Batching, BatchScheduler, GenerationCancelled, Request, batched


@pytest.fixture(scope="module")
def base():
    return tiny_base()


def _solo(base, prompt, adapter, n, stop=()):
    return base.generate([prompt], max_new_tokens=n, adapters=adapter, stop=list(stop))[0]


def test_staggered_rows_with_their_own_adapters_equal_one_at_a_time(base) -> None:
    texts = ["hello there", "a", "what is two plus two?", "abc def", "the quick brown fox", "zz", "one two three"]
    know, skill = rand_adapter(base, 4, 1), rand_adapter(base, 2, 7)
    parts = [(know,), (), (rand_adapter(base, 2, 2),), (), (know, skill), (rand_adapter(base, 3, 5),), ()]
    prompts = [base.encode(t) for t in texts]
    lengths = [20, 6, 18, 11, 16, 3, 14]
    sched = BatchScheduler(base, max_batch=4)
    pieces: list[str] = []
    try:
        reqs = []
        for i, (p, ps, n) in enumerate(zip(prompts, parts, lengths, strict=True)):
            on_text = pieces.append if i == 2 else None
            reqs.append(sched.submit(Request(p, ps, max_new_tokens=n, on_text=on_text)))
            time.sleep(0.003 * (i % 3))  # rows arrive while others decode
        got = [r.result(timeout=60) for r in reqs]
    finally:
        sched.close()
    for p, ps, n, g in zip(prompts, parts, lengths, got, strict=True):
        solo = _solo(base, p, concat(ps) if len(ps) > 1 else (ps[0] if ps else None), n)
        assert (g.text, g.token_ids, g.finish_reason) == (solo.text, solo.token_ids, solo.finish_reason)
        assert g.prompt_tokens == len(p) and g.completion_tokens == len(g.token_ids)
        assert g.token_logprobs == pytest.approx(solo.token_logprobs, abs=1e-4)
    assert "".join(pieces) == got[2].text
    assert 1 < sched.max_rows <= 4  # rows were decoded together, never more than max_batch
    assert got[0].token_ids != _solo(base, prompts[0], None, 20).token_ids  # the adapters mattered


def test_prompts_that_start_alike_reuse_the_prefix_cache_and_equal_one_at_a_time(base) -> None:
    """A prompt that starts with a kept prefix of its adapter is prefilled from the token after it, beside rows
    with another prefix or none, in one forward pass; every row still equals one-at-a-time generation."""
    head = "read the text and answer the question. text: "
    ad = rand_adapter(base, 4, 11)
    sched = BatchScheduler(base, max_batch=8)
    try:
        for tail in ("the door is red.", "a cat sat."):  # two prompts teach each adapter the shared head
            for a in (None, ad):
                sched.submit(Request(base.encode(head + tail), (a,) if a else (), max_new_tokens=4)).result(60)
        assert sched.prefixes is not None and sched.prefixes.hits == 0
        rows = [
            (head + "the locker is blue. q: colour?", None, 12),
            (head + "two plus two is four", ad, 10),
            ("something else entirely, no shared head", None, 9),  # no kept prefix: prefilled whole
            (head + "a cat sat.", None, 7),  # the whole prompt but its last token is known
            (head + "x", ad, 12),
        ]
        with sched._cv:  # queued together: one prefill for all of them
            reqs = [sched.submit(Request(base.encode(t), (a,) if a else (), max_new_tokens=n)) for t, a, n in rows]
        got = [r.result(timeout=60) for r in reqs]
        assert sched.prefixes.hits == 4 and sched.prefixes.saved >= 4 * len(base.encode(head)) - 4
        first = 2 * sum(len(base.encode(head + tail)) for tail in ("the door is red.", "a cat sat."))  # whole
        fed = first + sum(len(base.encode(t)) for t, _, _ in rows) - sched.prefixes.saved
        assert (sched.stats.prefill_rows, sched.stats.prefill_tokens) == (9, fed)
        assert sched.stats.busy_s >= sched.stats.prefill_s + sched.stats.decode_s > 0
    finally:
        sched.close()
    for (text, a, n), g in zip(rows, got, strict=True):
        solo = _solo(base, base.encode(text), a, n)
        assert (g.text, g.token_ids, g.finish_reason) == (solo.text, solo.token_ids, solo.finish_reason)
        assert g.token_logprobs == pytest.approx(solo.token_logprobs, abs=1e-4)
    no_reuse = BatchScheduler(base, prefix_cache=False)
    try:
        assert no_reuse.prefixes is None
        assert no_reuse.submit(Request(base.encode(rows[0][0]), max_new_tokens=12)).result(60).text == got[0].text
    finally:
        no_reuse.close()


def test_stop_strings_cancel_and_the_token_budget(base) -> None:
    prompt = base.encode("what is two plus two?")
    free = _solo(base, prompt, None, 24)
    stop = free.text[8:10]
    want = _solo(base, prompt, None, 24, stop=[stop])
    assert want.finish_reason == "stop"
    # a budget that fits one row at a time: requests wait their turn instead of joining
    sched = BatchScheduler(base, max_batch=8, max_tokens=len(prompt) + 30)
    try:
        cancel = threading.Event()
        cancel.set()
        gone = sched.submit(Request(base.encode("abc"), max_new_tokens=30, cancel=cancel))
        rows = [sched.submit(Request(prompt, max_new_tokens=24, stop=(stop,))) for _ in range(3)]
        with pytest.raises(GenerationCancelled):
            gone.result(timeout=60)
        for r in rows:
            g = r.result(timeout=60)
            assert (g.text, g.finish_reason) == (want.text, "stop")
        assert sched.max_rows == 1
    finally:
        sched.close()
    # a row cancelled while it decodes leaves the batch; the others go on
    sched = BatchScheduler(base, max_batch=4)
    try:
        cancel = threading.Event()
        pieces: list[str] = []
        leaving = sched.submit(
            Request(prompt, max_new_tokens=100, cancel=cancel, on_text=lambda p: (pieces.append(p), cancel.set()))
        )
        staying = sched.submit(Request(prompt, max_new_tokens=24))
        with pytest.raises(GenerationCancelled):
            leaving.result(timeout=60)
        assert staying.result(timeout=60).token_ids == free.token_ids
        assert len(pieces) <= 2  # it left at the next step, not after 100 tokens
    finally:
        sched.close()


def test_ignore_eos_goes_on_to_max_new_tokens_in_both_paths(base) -> None:
    """vLLM's ``ignore_eos``: past the end-of-turn token a row goes on to ``max_new_tokens``, in
    ``BaseModel.generate`` and through the scheduler alike; without it the row ends there."""
    p = base.encode("hello there")
    free = base.generate([p], max_new_tokens=12, ignore_eos=True)[0]
    assert len(free.token_ids) == 12 and free.finish_reason == "length"
    end = free.token_ids[3]  # made the end-of-turn token below: the answer reaches it
    first = free.token_ids.index(end)
    saved = base._eos_ids
    base._eos_ids = {end}
    try:
        ended = _solo(base, p, None, 12)
        kept = base.generate([p], max_new_tokens=12, ignore_eos=True)[0]
        sched = BatchScheduler(base, max_batch=2)
        try:
            with sched._cv:  # queued together: decoded side by side
                reqs = [sched.submit(Request(p, max_new_tokens=12, ignore_eos=flag)) for flag in (True, False)]
            rows = [r.result(timeout=60) for r in reqs]
        finally:
            sched.close()
    finally:
        base._eos_ids = saved
    assert (ended.token_ids, ended.finish_reason) == (free.token_ids[:first], "eos")
    assert (kept.token_ids, kept.finish_reason) == (free.token_ids, "length")
    assert [(g.token_ids, g.finish_reason) for g in rows] == [(free.token_ids, "length"), (ended.token_ids, "eos")]


def test_generate_inside_batched_goes_through_the_scheduler(base) -> None:
    prompts = [base.encode("hello"), base.encode("what is it")]
    ads = [rand_adapter(base, 4, 3), None]
    direct = base.generate(prompts, max_new_tokens=10, adapters=ads)
    pool = Batching(max_batch=4)
    try:
        with batched(pool):
            routed = base.generate(prompts, max_new_tokens=10, adapters=ads)
        assert pool.scheduler(base).steps > 0
    finally:
        pool.close()
    assert [g.token_ids for g in routed] == [g.token_ids for g in direct]
    assert [g.text for g in routed] == [g.text for g in direct]


def test_prefill_keeps_the_last_position_as_an_index(base) -> None:
    """``keep_last`` (an index tensor, not ``logits_to_keep=1``: a slow bfloat16 path on CPU) gives each left
    padded row the logits of its last prompt token, equal to the full forward's."""
    import torch

    from memory.models.base import keep_last

    ids, mask = base.left_pad([base.encode("hello there"), base.encode("a"), base.encode("what is two plus two?")])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        full = base.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        last = base.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep_last(ids)).logits
    assert last.shape == (3, 1, full.shape[-1])
    torch.testing.assert_close(last[:, 0], full, rtol=0, atol=1e-5)


def test_confidence_from_the_decode_loop_equals_a_second_forward_pass(base) -> None:
    from memory.services.query import QueryEngine

    prompt, ad = base.encode("the quick brown fox"), rand_adapter(base, 4, 9)
    gen = base.generate([prompt], max_new_tokens=12, adapters=ad)[0]
    assert len(gen.token_logprobs) == len(gen.token_ids) == 12
    second = QueryEngine._mean_logprob(base, prompt, gen.token_ids, ad)
    assert QueryEngine._confidence(base, prompt, gen, ad) == pytest.approx(second, abs=1e-4)


def test_queue_runs_batched_calls_together_and_other_model_work_alone() -> None:
    queue = GenerationQueue(max_waiting=2, batching=Batching(max_batch=3))
    log: list[str] = []
    active = 0
    most = 0
    lock = threading.Lock()

    def work(name: str, s: float) -> str:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
            log.append(f"+{name}")
        time.sleep(s)
        with lock:
            active -= 1
            log.append(f"-{name}")
        return name

    async def main() -> None:
        first = [asyncio.create_task(queue.run(work, f"q{i}", 0.2)) for i in range(3)]
        await asyncio.sleep(0.05)
        alone = asyncio.create_task(queue.run_alone(work, "train", 0.1))
        await asyncio.sleep(0.01)
        late = asyncio.create_task(queue.run(work, "late", 0.01))
        await asyncio.sleep(0.01)
        with pytest.raises(BusyError):  # 3 run, 2 wait
            await queue.run(work, "refused", 0.01)
        assert queue.depth == 5
        assert await asyncio.gather(*first, alone, late) == ["q0", "q1", "q2", "train", "late"]
        assert queue.depth == 0

    asyncio.run(main())
    assert most == 3
    i = log.index("+train")
    assert {"-q0", "-q1", "-q2"} <= set(log[:i]) and log[i + 1] == "-train" and log[i + 2] == "+late"


def test_a_caller_that_gives_up_cancels_its_generation() -> None:
    seen: list[bool] = []

    def generation() -> None:
        from memory.models.batching import current_route

        route = current_route()
        assert route is not None and route.cancel is not None
        seen.append(route.cancel.wait(10))

    async def main() -> None:
        queue = GenerationQueue(batching=Batching(max_batch=2))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(queue.run(generation), 0.1)
        while queue.depth:
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert seen == [True]


@pytest.mark.slow  # the real 135M model in float32 (~10 s to load and run on a busy 2-core machine)
def test_real_model_concurrent_queries_equal_sequential_ones(tmp_path) -> None:
    """Queries through AsyncParametricMemory decode together and answer exactly as one at a time would."""
    from _embedders import BagOfWords

    from memory.api import ParametricMemory
    from memory.config import Settings

    mem = ParametricMemory(Settings(home=tmp_path / "home", dtype="float32"), embedder=BagOfWords())
    facts = ["The vault code is 7342.", "The office opens at nine.", "Parking is on level three."]
    for i, f in enumerate(facts):
        mem.add(f, document_id=f"f{i}")
    questions = ["What is the vault code?", "When does the office open?", "Where is parking?", "What is 2+2?"]
    kw = {"mode": "retrieval", "k": 1, "max_new_tokens": 16, "log": False}
    sequential = [mem.query(q, **kw).answer for q in questions]
    amem = AsyncParametricMemory(mem, max_batch=4)

    async def main() -> list[str]:
        results = await asyncio.gather(*(amem.query(q, **kw) for q in questions))
        return [r.answer for r in results]

    assert asyncio.run(main()) == sequential
    sched = amem.generation.batching.scheduler(mem.runtime.base_model)
    assert sched.max_rows > 1
    # again: the prompts now start with a kept prefix (chat template, system prompt, instruction)
    assert asyncio.run(main()) == sequential
    assert sched.prefixes is not None and sched.prefixes.hits >= len(questions)

    async def leave_early() -> float:
        stream = amem.stream_query("Write a long story about a dragon.", **{**kw, "max_new_tokens": 400})
        async for piece in stream:
            assert isinstance(piece, str)
            break
        await stream.aclose()  # the client left: its row leaves the batch, its slot is free soon after
        t = time.perf_counter()
        while amem.generation.depth:
            await asyncio.sleep(0.01)
        return time.perf_counter() - t

    assert asyncio.run(leave_early()) < 3  # not the ~8 s that 400 tokens take
    assert sched.cancelled == 1
