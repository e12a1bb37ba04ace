"""Doc-to-LoRA hypernetwork: init, shapes, chunking, checkpoints, bad input (tiny Llama, fast) and the
shipped checkpoint on held-out facts (real 135M, slow).

Run: .venv/bin/python -m pytest tests/test_d2l.py -q            (slow ones: add -m slow)
"""

from __future__ import annotations

import json

import pytest
import torch
from _fixtures_d2l import tiny_base

from memory.errors import AdapterMismatchError, ModelError, ValidationError
from memory.hyper.d2l import (
    DEFAULT_CHECKPOINT,
    D2LConfig,
    D2LHypernetwork,
    _chunks_of,
    checkpoint_sha256,
    internalize,
    load_checkpoint,
    save_checkpoint,
)
from memory.lora.apply import apply_lora
from memory.training.d2l_data import FactGenerator, heldout_set


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return tiny_base()


def make_net(base, trained: bool = False, **kw) -> D2LHypernetwork:
    cfg = D2LConfig.for_model(
        base.model.config, rank=3, bias_rank=2, key_rank=4, chunk_tokens=8, base_model=base.fingerprint, **kw
    )
    net = D2LHypernetwork(cfg)
    if trained:  # stand-in for training: move every parameter off its (partly zero) init
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return net.eval()


def logits(base, text: str, adapter=None) -> torch.Tensor:
    ids = torch.tensor([base.tokenizer(text).input_ids])
    with apply_lora(base.model, adapter):
        return base.model(input_ids=ids).logits


# ----------------------------------------------------------------------------- fast
def test_zero_delta_at_init(base):
    net = make_net(base)
    [ad] = internalize(base, ["the vault code is 7179."], hypernet=net)
    assert ad.rank > 0
    assert all(float(ad.delta(p).abs().max()) == 0.0 for p in ad.weights)
    assert torch.equal(logits(base, "what is the code?", ad), logits(base, "what is the code?"))


def test_trained_net_changes_outputs_by_document(base):
    net = make_net(base, trained=True)
    a, b = internalize(base, ["the vault code is 7179.", "a dog barked in the valley."], hypernet=net)
    q = "what is the code?"
    base_l = logits(base, q)
    assert not torch.allclose(logits(base, q, a), base_l)
    assert not torch.allclose(logits(base, q, a), logits(base, q, b))


def test_shapes_chunking_and_rank_concat(base):
    net = make_net(base, trained=True)
    text = "abcdefghij klmnopqrst 0123456789"  # 32 characters = 32 tokens
    n_chunks = len(_chunks_of(list(range(32)), 8))
    seen = []
    net.config.max_rank = None  # keep every component
    [ad] = internalize(base, [text], hypernet=net, progress=lambda d, t: seen.append((d, t)))
    assert int(ad.metadata["chunks"]) == n_chunks == 4
    assert ad.metadata["tokens"] == "32"
    assert set(ad.weights) == {f"model.layers.{i}.mlp.down_proj" for i in net.config.target_layers}
    for a, b in ad.weights.values():
        assert a.shape == (n_chunks * 3 + 2, 48) and b.shape == (32, n_chunks * 3 + 2)
    assert seen[-1] == (n_chunks, n_chunks) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    # the chunk adapters add up: with a rank large enough to keep every token, the document adapter is
    # the sum over chunks, so it differs from the first chunk's adapter alone
    [first] = internalize(base, [text[:8]], hypernet=net)
    assert first.rank < ad.rank


def test_chunks_overlap_by_one_token():
    ids = list(range(20))
    chunks = _chunks_of(ids, 8)
    assert all(len(c) <= 9 for c in chunks)
    assert [c[0] for c in chunks[1:]] == [c[-1] for c in chunks[:-1]]
    assert sorted({t for c in chunks for t in c}) == ids
    assert _chunks_of([5], 8) == [[5]]


def test_batch_equals_one_by_one(base):
    net = make_net(base, trained=True)
    docs = ["the sky is blue.", "a much longer document about many things, 42 of them."]
    together = internalize(base, docs, hypernet=net, dtype=torch.float32)
    alone = [internalize(base, [d], hypernet=net, dtype=torch.float32)[0] for d in docs]
    for x, y in zip(together, alone, strict=True):
        for p in x.weights:
            torch.testing.assert_close(x.delta(p), y.delta(p), atol=1e-4, rtol=1e-3)


def test_empty_and_one_token_documents(base):
    net = make_net(base, trained=True)
    for bad in ["", "   \n"]:
        with pytest.raises(ValidationError):
            internalize(base, [bad], hypernet=net)
    with pytest.raises(ValidationError):
        internalize(base, "not a list", hypernet=net)  # type: ignore[arg-type]
    [ad] = internalize(base, ["a"], hypernet=net)
    assert ad.rank == net.config.bias_rank  # one token has no successor to write: bias block only
    assert internalize(base, [], hypernet=net) == []


def test_long_document_streams_with_progress(base):
    net = make_net(base, trained=True)
    text = "the grass is green. " * 100  # 2000 tokens -> 250 chunks of 8
    calls = []
    net.config.max_rank = None  # keep every component
    [ad] = internalize(base, [text], hypernet=net, batch_chunks=16, rank=1, progress=lambda d, t: calls.append(d))
    assert int(ad.metadata["chunks"]) == 250 and len(calls) == 16 and calls[-1] == 250
    assert ad.rank == 250 + net.config.bias_rank
    # a cap on the document's rank keeps memory bounded: only the highest-gate components survive
    [capped] = internalize(base, [text], hypernet=net, batch_chunks=16, rank=2, max_rank=40)
    assert capped.rank == 40 + net.config.bias_rank
    assert capped.metadata["chunks"] == "250"
    net.config.max_rank = 10  # the checkpoint's own cap is the default
    assert internalize(base, [text], hypernet=net, rank=2)[0].rank == 10 + net.config.bias_rank


def test_save_load_round_trip(base, tmp_path):
    net = make_net(base, trained=True)
    sha = save_checkpoint(net, tmp_path / "ck")
    assert sha == checkpoint_sha256(tmp_path / "ck")
    again = load_checkpoint(tmp_path / "ck", base)
    assert again.config.target_layers == net.config.target_layers
    for k, v in net.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    x = internalize(base, ["the code is 12."], hypernet=net)[0]
    y = internalize(base, ["the code is 12."], hypernet=again)[0]
    assert y.metadata["hypernetwork_sha256"] == sha
    for p in x.weights:
        assert torch.equal(x.weights[p][0], y.weights[p][0]) and torch.equal(x.weights[p][1], y.weights[p][1])


def test_wrong_base_model_is_refused(base, tmp_path):
    net = make_net(base, trained=True)
    save_checkpoint(net, tmp_path / "ck")
    other_shape = tiny_base(layers=6, name="other")
    with pytest.raises(AdapterMismatchError):
        load_checkpoint(tmp_path / "ck", other_shape)
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["base_model"] = "someone-else@0123456789abcdef"
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterMismatchError):
        load_checkpoint(tmp_path / "ck", base)
    with pytest.raises(AdapterMismatchError):
        internalize(base, ["x y"], hypernet=make_net(other_shape))


def test_checkpoint_lookup_needs_the_whole_fingerprint(base, tmp_path):
    """``auto`` picks a D2L checkpoint only for the base model it was trained for: same name and architecture."""
    from types import SimpleNamespace

    from memory.internalizers import CDInternalizer, d2l_checkpoint_for, resolve

    save_checkpoint(make_net(base, trained=True), tmp_path / "ck")
    assert d2l_checkpoint_for(base, tmp_path / "ck") == tmp_path / "ck"
    name, arch = base.fingerprint.rsplit("@", 1)
    for other in (f"{name}-finetuned@{arch}", f"{name}@0123456789abcdef"):
        impostor = SimpleNamespace(fingerprint=other)
        assert d2l_checkpoint_for(impostor, tmp_path / "ck") is None
        assert isinstance(resolve("auto", impostor, checkpoint=tmp_path / "ck"), CDInternalizer)
        with pytest.raises(ModelError, match="no Doc-to-LoRA checkpoint"):
            resolve("d2l", impostor, checkpoint=tmp_path / "ck")


def test_missing_or_corrupt_checkpoint(base, tmp_path):
    with pytest.raises(ModelError):
        load_checkpoint(tmp_path / "nothing", base)
    save_checkpoint(make_net(base), tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError):
        load_checkpoint(tmp_path / "ck", base)


def test_config_validation():
    with pytest.raises(ValidationError):
        D2LConfig(num_layers=4, target_layers=(7,))
    with pytest.raises(ValidationError):
        D2LConfig(rank=0)


def test_train_and_heldout_pools_are_disjoint():
    train = FactGenerator("train", seed=3)
    train_answers = {train.mixed(max_facts=3).answer for _ in range(3000)}
    held = {s.answer for s in heldout_set(300, 50, max_facts=3)}
    assert held and not (held & train_answers)


def test_chunked_training_features_match_inference_chunks(base):
    """Training on a multi-chunk document sees each chunk as inference does (read on its own, overlapping by one
    token), concatenated along the token axis."""
    from memory.hyper.d2l import document_features
    from memory.training.d2l_objective import chunked_features

    net = make_net(base)
    layers = net.config.target_layers
    texts = ["abcdefghijklmnopqrstu", "short doc"]
    f = chunked_features(base.model, base.tokenizer, texts, chunk=8, max_chunks=4, layers=layers)
    ids = base.tokenizer(texts[0], add_special_tokens=False).input_ids
    chunks = _chunks_of(ids, 8)
    assert len(chunks) == 3
    T = max(len(c) for c in chunks)
    assert f.mask.shape == (2, 3 * T)
    assert int(f.mask[0].sum()) == sum(len(c) - 1 for c in chunks)
    assert int(f.mask[1].sum()) == len(base.tokenizer(texts[1], add_special_tokens=False).input_ids) - 1
    one = document_features(
        base.model, torch.tensor([chunks[1]]), torch.ones(1, len(chunks[1]), dtype=torch.long), layers
    )
    layer = layers[-1]
    assert torch.allclose(f.m[layer][0, T : T + len(chunks[1])], one.m[layer][0], atol=1e-5)
    capped = chunked_features(base.model, base.tokenizer, texts, chunk=8, max_chunks=2, layers=layers)
    assert capped.mask.shape[1] == 2 * 9


# ----------------------------------------------------------------------------- slow: the shipped checkpoint
@pytest.mark.slow
def test_shipped_checkpoint_beats_no_context_on_heldout_facts():
    from memory.models import load_base_model
    from memory.prompts import QA_SYSTEM
    from memory.training.d2l import evaluate_gap
    from memory.training.d2l_objective import answer_logits, per_sample_nll, student_batch

    real = load_base_model()
    net = load_checkpoint(DEFAULT_CHECKPOINT, real)
    samples = heldout_set(12, 0, max_facts=1, seed=4242)
    res = evaluate_gap(real, net, samples, net.config.chunk_tokens, bs=12)
    batch = student_batch(real.tokenizer, [s.question for s in samples], [s.answer for s in samples])
    with torch.no_grad():
        no_context = float(per_sample_nll(answer_logits(real.model, batch), batch, len(samples)).mean())
    # the matched adapter explains held-out answers far better than no adapter and than another document's
    assert res["fact_matched"] < no_context - 2.0, (res, no_context)
    assert res["fact_gap"] > 1.0, res
    ads = internalize(real, [s.document for s in samples], hypernet=net)
    with_ad = real.generate([s.question for s in samples], adapters=ads, system=QA_SYSTEM, max_new_tokens=10)
    without = real.generate([s.question for s in samples], system=QA_SYSTEM, max_new_tokens=10)
    acc = lambda gens: sum(s.answer.lower() in g.text.lower() for s, g in zip(samples, gens, strict=True))
    assert acc(with_ad) > acc(without), ([g.text for g in with_ad], [s.answer for s in samples])


@pytest.mark.slow
def test_gpu_run_script_trains_a_few_steps_on_the_cpu_and_exports(tmp_path):
    """The time-boxed GPU script, run for 2 steps with --device cpu: warm start, mixture, gap log, export."""
    import json as _json

    from memory.training import d2l_gpu_run
    from memory.training.d2l_prose import Passage

    cache = tmp_path / "prose.jsonl"
    with cache.open("w") as f:
        for i in range(60):  # sources of both splits (split by a hash of the source name)
            text = (
                f"The relay number {i} forwards {i + 20} messages per second to the archive. It was designed by "
                f"Mira Holm in 20{10 + i % 9}. Each message is kept for {i % 7 + 2} days before it is dropped."
            )
            f.write(_json.dumps(Passage("meta", f"pkg{i}", text).__dict__) + "\n")
    out = tmp_path / "run"
    assert (
        d2l_gpu_run.main(
            [
                "--out",
                str(out),
                "--device",
                "cpu",
                "--max-steps",
                "2",
                "--bs",
                "2",
                "--prose-cache",
                str(cache),
                "--eval-n",
                "2",
            ]
        )
        == 0
    )
    log = [_json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and log[-1]["step"] == 2
    assert {"family_gap", "prose_gap", "haystack_gap"} <= set(log[0])
    net = load_checkpoint(out / "export")
    assert net.config.extra["init"].endswith("d2l-smollm2-135m")
    assert checkpoint_sha256(out / "export") != checkpoint_sha256(DEFAULT_CHECKPOINT)
