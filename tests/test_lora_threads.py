"""Adapters are chosen per call: concurrent calls with different adapters compute what they would alone.

Run: .venv/bin/python -m pytest tests/test_lora_threads.py -q
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from _fixtures_models import rand_adapter, tiny_base

from memory.lora import LoraAdapter, apply_lora


@pytest.fixture
def fast_switching():
    """Switch threads every 10 microseconds, so that calls interleave at nearly every Python line."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def test_interleaved_contexts_do_not_leak_into_each_other():
    """Thread a enters its adapter, then b enters its own; a computes, a exits first, then b computes and
    exits (not LIFO). Each sees only its own adapter, and the module is back to the base afterwards."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4)).requires_grad_(False)
    x = torch.ones(1, 4)
    base_out = net(x).clone()
    ad = {k: LoraAdapter({"0": (torch.ones(1, 4), torch.full((4, 1), float(k)))}, "toy@0") for k in (1, 3)}
    alone = {}
    for k, a in ad.items():
        with apply_lora(net, a):
            alone[k] = net(x).clone()
    step = threading.Barrier(2)
    got: dict[str, torch.Tensor] = {}
    errors: list[BaseException] = []

    def run(name: str, k: int, first: bool) -> None:
        try:
            if not first:
                step.wait()  # 1: a is inside its context
            with apply_lora(net, ad[k]):
                if first:
                    step.wait()  # 1
                    step.wait()  # 2: b is inside its context too
                    got[name] = net(x).clone()
                else:
                    step.wait()  # 2
                    step.wait()  # 3: a has left its context
                    got[name] = net(x).clone()
            if first:
                step.wait()  # 3
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            step.abort()

    threads = [threading.Thread(target=run, args=("a", 1, True)), threading.Thread(target=run, args=("b", 3, False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors, errors
    assert torch.equal(got["a"], alone[1]), got["a"] - alone[1]
    assert torch.equal(got["b"], alone[3]), got["b"] - alone[3]
    assert torch.equal(net(x), base_out), f"leftover delta {(net(x) - base_out).abs().max().item()}"


def test_threads_with_different_adapters_match_sequential_runs(fast_switching):
    base = tiny_base()
    ads = [rand_adapter(base, rank=2 + i, seed=10 + i) for i in range(4)]
    prompts = ["hello there", "what is it?", "abc", "one two three"]
    ids = [base.chat_ids(p) for p in prompts]
    x, mask = base.left_pad(ids)
    texts = ["a short text to read", "another one"]
    with torch.inference_mode():
        base_logits = base.forward(x, mask).logits.clone()
        base_hidden = base.hidden_states(texts)[0].clone()

    def work(i: int) -> dict[str, object]:
        ad = ads[i]
        out: dict[str, object] = {}
        with torch.inference_mode():
            out["forward"] = base.forward(x, mask, adapters=ad).logits.clone()
            out["rows"] = base.forward(x, mask, adapters=[ad, None, ads[(i + 1) % 4], ad]).logits.clone()
            out["hidden"] = base.hidden_states(texts)[0].clone()  # no adapter asked: base states
        out["generate"] = base.generate(prompts[i], max_new_tokens=12, adapters=ad)[0].token_ids
        out["stream"] = "".join(base.stream(prompts[i], max_new_tokens=12, adapters=ad))
        return out

    sequential = [work(i) for i in range(4)]
    assert not torch.equal(sequential[0]["forward"], base_logits), "the adapter had no effect"
    for _ in range(2):
        with ThreadPoolExecutor(max_workers=4) as pool:
            concurrent = list(pool.map(work, [0, 1, 2, 3, 3, 2, 1, 0]))
        for i, got in zip([0, 1, 2, 3, 3, 2, 1, 0], concurrent, strict=True):
            want = sequential[i]
            for key in ("forward", "rows", "hidden"):
                assert torch.equal(got[key], want[key]), f"thread {i}: {key} differs from its sequential run"
            assert got["generate"] == want["generate"] and got["stream"] == want["stream"], f"thread {i}"
            assert torch.equal(got["hidden"], base_hidden)
    with torch.inference_mode():
        assert torch.equal(base.forward(x, mask).logits, base_logits), "the base model changed"
