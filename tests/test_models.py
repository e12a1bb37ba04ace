"""Base-model runtime: loading, errors, generation loop (tiny random Llama, fast) and the real 135M (slow).

Run: .venv/bin/python -m pytest tests/test_models.py -q            (slow ones: add -m slow)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from memory.config import Settings
from memory.errors import AdapterMismatchError, ConfigError, ModelError
from memory.lora import LoraAdapter, scale
from memory.models import base_fingerprint, clear_model_cache, embedded_gguf_path, load_base_model, resolve_dtype
from memory.models.loader import SOURCE_FILE

from _fixtures_models import rand_adapter, tiny_base  # noqa: E402  (tests/ is on sys.path)

# ----------------------------------------------------------------------------- fast
def test_dtype_and_device_resolution():
    assert resolve_dtype("float32") is torch.float32 and resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) in (torch.bfloat16, torch.float32)
    with pytest.raises(ConfigError):
        resolve_dtype("int3")


def test_model_not_found_names_what_was_searched(tmp_path):
    with pytest.raises(ModelError) as e:
        load_base_model("no-such-model-xyz", settings=Settings(home=tmp_path))
    msg = str(e.value)
    assert "no-such-model-xyz" in msg and "smollm2-135m-instruct" in msg and str(tmp_path / "models") in msg


def test_corrupt_safetensors_and_incomplete_weights_raise(tmp_path):
    base = tiny_base()
    d = tmp_path / "tiny"
    base.model.save_pretrained(d)
    base.tokenizer.save_pretrained(d)
    loaded = load_base_model(str(d), settings=Settings(home=tmp_path / "h"), dtype="float32")
    assert loaded.fingerprint.split("@")[1] == base.fingerprint.split("@")[1]
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelError, match="corrupt|truncated"):
        load_base_model(str(d), settings=Settings(home=tmp_path / "h2"), dtype="float32")


def test_base_fingerprint_needs_no_weights(tmp_path):
    """What a job submitter names without loading the model equals what a load computes."""
    base = tiny_base()
    d = tmp_path / "tiny"
    base.model.save_pretrained(d)
    base.tokenizer.save_pretrained(d)
    weights = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(b"not read")
    clear_model_cache()
    fp = base_fingerprint(str(d), settings=Settings(home=tmp_path / "h"))
    (d / "model.safetensors").write_bytes(weights)
    assert fp == load_base_model(str(d), settings=Settings(home=tmp_path / "h"), dtype="float32").fingerprint


def test_corrupt_gguf_raises(tmp_path):
    src = embedded_gguf_path()
    bad = tmp_path / "broken.gguf"
    with open(src, "rb") as f:
        bad.write_bytes(f.read(300_000))
    with pytest.raises(ModelError, match="broken.gguf"):
        load_base_model(str(bad), settings=Settings(home=tmp_path / "h"))
    assert not any((tmp_path / "h" / "models").glob("broken*")), "a partial conversion was left behind"


def test_batched_left_padded_generation_equals_one_by_one():
    base = tiny_base()
    prompts = [base.encode("hello there"), base.encode("a"), base.encode("what is two plus two?")]
    ads = [rand_adapter(base, 4, 1), None, rand_adapter(base, 2, 2)]
    batched = base.generate(prompts, max_new_tokens=12, adapters=ads)
    for p, ad, g in zip(prompts, ads, batched):
        single = base.generate([p], max_new_tokens=12, adapters=ad)[0]
        assert g.token_ids == single.token_ids and g.text == single.text
        assert g.prompt_tokens == len(p) and g.completion_tokens == len(g.token_ids)
    # the adapters changed something
    plain = base.generate(prompts[:1], max_new_tokens=12)[0]
    assert plain.token_ids != batched[0].token_ids


def test_sampling_is_seeded_and_top_p_one_token_is_greedy():
    base = tiny_base()
    p = [base.encode("abc")]
    a = base.generate(p, max_new_tokens=10, temperature=1.0, seed=3)[0].token_ids
    b = base.generate(p, max_new_tokens=10, temperature=1.0, seed=3)[0].token_ids
    assert a == b
    greedy = base.generate(p, max_new_tokens=10)[0].token_ids
    nucleus = base.generate(p, max_new_tokens=10, temperature=1.0, top_p=1e-6, seed=4)[0].token_ids
    assert nucleus == greedy


def test_stop_strings_and_stream():
    base = tiny_base()
    p = [base.encode("hi")]
    full = base.generate(p, max_new_tokens=20)[0]
    assert len(full.text) >= 4 and full.finish_reason == "length"
    stop = full.text[3:5]
    cut = base.generate(p, max_new_tokens=20, stop=[stop])[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
    assert "".join(base.stream(p[0], max_new_tokens=20)) == full.text
    assert "".join(base.stream(p[0], max_new_tokens=20, stop=[stop])) == cut.text


def test_generate_rejects_adapter_for_other_model():
    base = tiny_base()
    ad = rand_adapter(base, 2, 1)
    other = LoraAdapter(ad.weights, "someone-else@0000")
    with pytest.raises(AdapterMismatchError):
        base.generate([base.encode("a")], max_new_tokens=2, adapters=other)


def test_hidden_states_shapes():
    base = tiny_base()
    h, m = base.hidden_states(["abc", "a"], layers=[0, -1])
    assert h.shape == (2, 2, 3, base.hidden_size) and m.tolist() == [[1, 1, 1], [1, 0, 0]]


# ----------------------------------------------------------------------------- slow: the real 135M
@pytest.fixture(scope="module")
def real(shared_models_dir):
    torch.set_num_threads(int(os.environ.get("PMEM_TEST_THREADS", "2")))
    return load_base_model(settings=Settings(home=shared_models_dir))


@pytest.mark.slow
def test_real_model_loads_and_answers(real, shared_models_dir):
    assert real.num_layers == 30 and real.hidden_size == 576
    assert real.fingerprint.startswith("smollm2-135m-instruct@")
    # identical across the GGUF -> safetensors conversion (recorded from the GGUF-loaded weights)
    source = json.loads((real.path / SOURCE_FILE).read_text())
    assert source["fingerprint"] == real.fingerprint
    assert base_fingerprint(settings=Settings(home=shared_models_dir)) == real.fingerprint  # what job keys name
    g = real.generate("What is the capital of France?", max_new_tokens=16)[0]
    assert "Paris" in g.text and g.finish_reason == "eos"
    assert real.count_tokens("hello world") == len(real.encode("hello world")) > 0
    assert load_base_model(settings=Settings(home=shared_models_dir)) is real  # process-wide cache


@pytest.mark.slow
def test_real_fingerprint_same_in_another_process(real, shared_models_dir):
    code = (
        "from memory.config import Settings; from memory.models import load_base_model; "
        f"print(load_base_model(settings=Settings(home={str(shared_models_dir)!r}), dtype='float32').fingerprint)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == real.fingerprint


def test_a_stream_can_be_consumed_from_other_threads():
    """LangChain's async streaming runs each next() in an executor thread: every step, in whichever thread,
    runs with the stream's adapter, and none of it stays active in the consuming threads."""
    from concurrent.futures import ThreadPoolExecutor

    base = tiny_base()
    ad = scale(rand_adapter(base, 4, seed=3), 0.1)
    prompt = base.encode("hi")
    expected = "".join(base.stream(prompt, max_new_tokens=20, adapters=ad))
    assert len(expected) >= 4 and expected != "".join(base.stream(prompt, max_new_tokens=20))
    it = base.stream(prompt, max_new_tokens=20, adapters=ad)
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        plain = base.forward(ids).logits
    pieces: list[str] = []

    def step() -> str | None:
        piece = next(it, None)
        with torch.inference_mode():  # the stream's adapter is not active here, between two items
            assert torch.equal(base.forward(ids).logits, plain)
        return piece

    with ThreadPoolExecutor(max_workers=1) as a, ThreadPoolExecutor(max_workers=1) as b:
        first = True
        while True:  # started in thread a (first next), continued and finished in thread b
            piece = (a if first else b).submit(step).result()
            first = False
            if piece is None:
                break
            pieces.append(piece)
    assert "".join(pieces) == expected
