"""LoRA representation, application, composition and serialisation (tiny random Llama; fast).

Run: .venv/bin/python -m pytest tests/test_lora.py -q
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from memory.errors import AdapterMismatchError, IntegrityError, ModelError
from memory.lora import (
    AdapterCache,
    LoraAdapter,
    apply_lora,
    apply_lora_batched,
    concat,
    from_bytes,
    load_peft,
    save_peft,
    scale,
    to_bytes,
    zeros_like,
)

FP = "tiny-llama@test"
TARGETS = ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds OpenMP contention
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval().requires_grad_(False)


def random_adapter(
    model: torch.nn.Module, rank: int, targets=TARGETS, seed: int = 1, layers=None, fp: str = FP
) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and any(name.endswith(t) for t in targets):
            layer = int(name.split(".")[2])
            if layers is not None and layer not in layers:
                continue
            a = torch.randn(rank, mod.in_features, generator=g) * 0.3
            b = torch.randn(mod.out_features, rank, generator=g) * 0.3
            weights[name] = (a, b)
    return LoraAdapter(weights, fp)


def merged(model: torch.nn.Module, adapter: LoraAdapter) -> torch.nn.Module:
    m = copy.deepcopy(model)
    with torch.no_grad():
        for path in adapter.weights:
            m.get_submodule(path).weight += adapter.delta(path)
    return m


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_model()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(5))


def logits(model, ids, adapters=None) -> torch.Tensor:
    with torch.no_grad(), apply_lora(model, adapters):
        return model(input_ids=ids).logits


def test_applied_equals_merged_weights(model, ids):
    ad = random_adapter(model, 4)
    out = logits(model, ids, ad)
    ref = merged(model, ad)(input_ids=ids).logits.detach()
    assert not torch.allclose(out, logits(model, ids), atol=1e-3), "adapter had no effect"
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_zero_adapter_gives_base_logits_and_weights_untouched(model, ids):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = logits(model, ids)
    out = logits(model, ids, zeros_like(random_adapter(model, 4)))
    torch.testing.assert_close(out, base, atol=0, rtol=0)
    ad = random_adapter(model, 8)
    logits(model, ids, ad)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was modified"
    assert not any("forward" in m.__dict__ for m in model.modules()), "patch not removed on exit"
    torch.testing.assert_close(logits(model, ids), base, atol=0, rtol=0)


def test_mixed_batch_equals_rows_one_by_one(model, ids):
    # different ranks, different module sets, and a base row
    a1 = random_adapter(model, 2, targets=("mlp.down_proj",), seed=2)
    a2 = random_adapter(model, 8, targets=("self_attn.q_proj", "self_attn.v_proj"), seed=3, layers={1})
    rows = [a1, None, a2]
    out = logits(model, ids, rows)
    for i, ad in enumerate(rows):
        ref = logits(model, ids[i : i + 1], ad)
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-5, rtol=1e-5)


def test_apply_lora_batched_equals_per_row_objects(model, ids):
    ads = [random_adapter(model, 4, seed=s) for s in (7, 8, 9)]
    stacked = {
        p: (torch.stack([ad.weights[p][0] for ad in ads]), torch.stack([ad.weights[p][1] for ad in ads]))
        for p in ads[0].weights
    }
    with torch.no_grad(), apply_lora_batched(model, stacked):
        out = model(input_ids=ids).logits
    torch.testing.assert_close(out, logits(model, ids, ads), atol=1e-5, rtol=1e-5)


def test_concat_equals_sum_of_deltas(model, ids):
    a = random_adapter(model, 2, seed=11)
    b = random_adapter(model, 3, targets=("mlp.down_proj",), seed=12)
    c = concat([a, b])
    assert c.rank == 5 and c.target_modules == sorted(TARGETS)
    for p in c.weights:
        expected = a.delta(p) + (b.delta(p) if p in b.weights else 0)
        torch.testing.assert_close(c.delta(p), expected, atol=1e-6, rtol=1e-5)
    # and nesting the two contexts (knowledge + skill in one pass) equals the concatenation
    with torch.no_grad(), apply_lora(model, a), apply_lora(model, b):
        nested = model(input_ids=ids).logits
    torch.testing.assert_close(nested, logits(model, ids, c), atol=1e-5, rtol=1e-5)


def test_scale_and_properties(model):
    a = random_adapter(model, 4)
    p = next(iter(a.weights))
    torch.testing.assert_close(scale(a, -2.0).delta(p), -2.0 * a.delta(p))
    assert a.num_bytes == sum(x.numel() * 4 + y.numel() * 4 for x, y in a.weights.values())
    assert a.to(torch.bfloat16).dtype == torch.bfloat16


def test_gradients_flow_through_apply(model, ids):
    a = random_adapter(model, 4)
    weights = {p: (A.clone().requires_grad_(), B.clone().requires_grad_()) for p, (A, B) in a.weights.items()}
    ad = LoraAdapter(weights, FP)
    with apply_lora(model, [ad, None, ad]):
        for _ in range(2):  # two backward passes in one context must work
            loss = model(input_ids=ids).logits.square().mean()
            loss.backward()
    grads = [t.grad for pair in weights.values() for t in pair]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.parameters())


def test_bf16_model_accepts_fp32_adapter(ids):
    m = tiny_model().to(torch.bfloat16)
    ad = random_adapter(m, 4)
    out = logits(m, ids, ad).float()
    ref = merged(tiny_model(), ad)(input_ids=ids).logits.detach()
    assert (out - ref).abs().max() < 0.1


def test_bytes_round_trip_and_corruption(model, ids):
    ad = LoraAdapter(random_adapter(model, 4).weights, FP, {"doc": "d1", "kind": "knowledge"})
    blob = to_bytes(ad)
    assert to_bytes(ad) == blob, "serialisation is not deterministic"
    back = from_bytes(blob)
    assert back.base_model == FP and back.metadata == ad.metadata
    torch.testing.assert_close(logits(model, ids, back), logits(model, ids, ad), atol=0, rtol=0)
    half = from_bytes(to_bytes(ad.to(torch.bfloat16)))
    assert all(torch.equal(half.weights[p][1], ad.to(torch.bfloat16).weights[p][1]) for p in ad.weights)
    with pytest.raises(IntegrityError):
        from_bytes(blob[: len(blob) // 2])
    with pytest.raises(IntegrityError):
        from_bytes(b"\x01\x00")


def test_peft_round_trip_identical_logits(model, ids, tmp_path):
    from peft import PeftModel

    ad = concat(
        [random_adapter(model, 4, seed=21), random_adapter(model, 2, targets=("mlp.down_proj",), seed=22, layers={0})]
    )
    save_peft(ad, tmp_path, "tiny-llama")
    pm = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path)).eval()
    with torch.no_grad():
        peft_out = pm(input_ids=ids).logits
    torch.testing.assert_close(peft_out, logits(model, ids, ad), atol=1e-5, rtol=1e-5)
    back = load_peft(tmp_path)
    assert back.base_model == FP
    torch.testing.assert_close(logits(model, ids, back), logits(model, ids, ad), atol=1e-6, rtol=1e-6)


def test_peft_export_of_an_adapter_on_the_top_layers_only(model, ids, tmp_path):
    """An adapter trained on the top layers only (self-study's ``first_layer``): PEFT builds LoRA modules there
    and nowhere else, and answers as we do."""
    from peft import PeftModel

    n_layers = model.config.num_hidden_layers
    ad = random_adapter(model, 4, seed=23, layers={n_layers - 1})
    save_peft(ad, tmp_path, "tiny-llama")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [n_layers - 1] and cfg["layers_pattern"] == "layers"
    pm = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path)).eval()
    lora_layers = {int(n.split(".layers.")[1].split(".")[0]) for n, _ in pm.named_modules() if n.endswith("lora_A")}
    assert lora_layers == {n_layers - 1}
    with torch.no_grad():
        torch.testing.assert_close(pm(input_ids=ids).logits, logits(model, ids, ad), atol=1e-5, rtol=1e-5)


def test_load_peft_made_by_peft_folds_alpha(model, ids, tmp_path):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    pm = get_peft_model(copy.deepcopy(model), cfg).eval()
    pm.save_pretrained(str(tmp_path))
    with torch.no_grad():
        ref = pm(input_ids=ids).logits
    ad = load_peft(tmp_path, base_model=FP)
    assert ad.rank == 4 and ad.target_modules == ["mlp.down_proj", "self_attn.q_proj"]
    torch.testing.assert_close(logits(model, ids, ad), ref, atol=1e-5, rtol=1e-5)


def test_error_cases(model, ids, tmp_path):
    from _fixtures_models import tiny_tokenizer

    from memory.models import BaseModel

    base = BaseModel(model=tiny_model(), tokenizer=tiny_tokenizer(), name="tiny-llama", fingerprint=FP)
    with (
        pytest.raises(AdapterMismatchError, match=r"another|made for"),
        apply_lora(base, random_adapter(base.model, 2, fp="other-model@123")),
    ):
        pass
    with apply_lora(model, random_adapter(model, 2, fp="other-model@123")):
        pass  # a bare module has no fingerprint: only the shapes are checked
    bad = {"model.layers.0.mlp.down_proj": (torch.zeros(2, 5), torch.zeros(32, 2))}
    with pytest.raises(AdapterMismatchError, match="Linear"):
        LoraAdapter(bad, FP).validate_for(model)
    with pytest.raises(AdapterMismatchError, match="does not exist"):
        LoraAdapter({"model.layers.9.mlp.down_proj": (torch.zeros(2, 48), torch.zeros(32, 2))}, FP).validate_for(model)
    with pytest.raises(AdapterMismatchError):
        LoraAdapter({"x": (torch.zeros(2, 5), torch.zeros(3, 4))}, FP)
    with pytest.raises(AdapterMismatchError):
        concat([random_adapter(model, 2), random_adapter(model, 2, fp="other@1")])
    with pytest.raises(Exception, match="rows"), torch.no_grad(), apply_lora(model, [random_adapter(model, 2)] * 2):
        model(input_ids=ids)  # 3 rows, 2 adapters
    assert not any("forward" in m.__dict__ for m in model.modules()), "patch not removed after an error"
    with pytest.raises(ModelError):
        load_peft(tmp_path)


def test_adapter_cache_lru(model):
    cache = AdapterCache(maxsize=2)
    blobs = [to_bytes(random_adapter(model, 2, seed=s)) for s in range(3)]
    first = cache.decode(blobs[0])
    assert cache.decode(blobs[0]) is first and cache.hits == 1
    cache.decode(blobs[1])
    cache.decode(blobs[2])  # evicts blobs[0]
    assert len(cache) == 2 and cache.decode(blobs[0]) is not first
    import hashlib

    sha = hashlib.sha256(blobs[1]).hexdigest()
    assert cache.get_or_load(sha, lambda: blobs[1]).rank == 2
    with pytest.raises(IntegrityError):
        AdapterCache(2).get_or_load(sha, lambda: blobs[2])
