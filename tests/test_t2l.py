"""Text-to-LoRA hypernetwork, its trainer and the committed checkpoint.

Fast tests use the real MiniLM description encoder and small hypernetwork shapes; slow ones load the real
SmolLM2-135M. Run: .venv/bin/python -m pytest tests/test_t2l.py -q
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from memory.errors import AdapterMismatchError, ModelError, ValidationError
from memory.hyper.t2l import DEFAULT_TARGETS, T2LConfig, T2LHypernetwork
from memory.hyper.t2l_text import MAX_DESCRIPTION_TOKENS, DescriptionEncoder
from memory.lora import LoraAdapter, apply_lora

SMOL_DIMS = {"self_attn.q_proj": (576, 576), "self_attn.v_proj": (576, 192)}
TINY_DIMS = {"self_attn.q_proj": (16, 16), "self_attn.v_proj": (16, 8)}
torch.set_num_threads(1)  # the CPU is shared; OpenMP spinning on 2 threads is slower here
CHECKPOINT = Path(__file__).resolve().parent.parent / "memory" / "checkpoints" / "t2l-smollm2-135m"


def tiny(size: str = "L", **kw) -> T2LHypernetwork:
    torch.manual_seed(0)
    return T2LHypernetwork(T2LConfig(n_layers=3, module_dims=TINY_DIMS, size=size, rank=4, base_model="toy@1", **kw))


@pytest.fixture(scope="module")
def encoder() -> DescriptionEncoder:
    return DescriptionEncoder.load()


@pytest.mark.parametrize("size", ["L", "M", "S"])
def test_zero_delta_at_init(size: str) -> None:
    """Every generated B is exactly zero at init (a no-op adapter), A is a finite non-zero PEFT-like init."""
    net = tiny(size).eval()
    out = net(torch.randn(5, 384))
    for m, (i, o) in TINY_DIMS.items():
        a, b = out[m]
        assert a.shape == (5, 3, 4, i) and b.shape == (5, 3, o, 4)
        assert torch.count_nonzero(b) == 0
        assert torch.isfinite(a).all() and a.abs().sum() > 0


def test_offset_lora_is_shared_by_every_description() -> None:
    """With ``offset_rank`` the adapters have rank r + offset_rank, start at zero delta, and the offset part is
    the same for every description (the generated part is not)."""
    net = tiny("L", offset_rank=2, dropout=0.0).eval()
    emb = torch.nn.functional.normalize(torch.randn(2, 384), dim=-1)
    a, b = net(emb)["self_attn.q_proj"]
    assert a.shape == (2, 3, 6, 16) and b.shape == (2, 3, 16, 6) and torch.count_nonzero(b) == 0
    with torch.no_grad():
        net.offset_b["self_attn__q_proj"].normal_()
        for head in net.heads.values():
            head.weight.normal_()
    a, b = net(emb)["self_attn.q_proj"]
    assert torch.equal(a[0, :, 4:], a[1, :, 4:]) and torch.equal(b[0, :, :, 4:], b[1, :, :, 4:])
    assert not torch.allclose(a[0, :, :4], a[1, :, :4])
    with pytest.raises(ValidationError, match="offset_rank"):
        tiny("L", offset_rank=-1)


@pytest.mark.parametrize("size", ["L", "M", "S"])
def test_training_moves_away_from_zero(size: str) -> None:
    """Gradients reach the head: one optimiser step on a loss through B @ A gives a non-zero,
    description-dependent delta."""
    net = tiny(size, dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    emb = torch.nn.functional.normalize(torch.randn(2, 384), dim=-1)
    target = torch.randn(16, 16)
    for _ in range(3):
        a, b = net(emb)["self_attn.q_proj"]
        loss = ((b[0, 0] @ a[0, 0]) - target).pow(2).mean() + ((b[1, 0] @ a[1, 0]) + target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    a, b = net(emb)["self_attn.q_proj"]
    d0, d1 = b[0, 0] @ a[0, 0], b[1, 0] @ a[1, 0]
    assert d0.abs().sum() > 0 and not torch.allclose(d0, d1)


def test_shapes_targets_and_provenance(encoder: DescriptionEncoder) -> None:
    """generate: one LoraAdapter per description, every layer x {q_proj, v_proj}, rank r, scale folded in."""
    net = T2LHypernetwork(T2LConfig(n_layers=4, module_dims=SMOL_DIMS, base_model="smol@x", size="M"))
    ads = net.generate(["Convert the text to uppercase.", "Answer with a number."], encoder=encoder)
    assert len(ads) == 2
    for ad in ads:
        assert isinstance(ad, LoraAdapter)
        assert ad.target_modules == sorted(DEFAULT_TARGETS)
        assert len(ad.weights) == 4 * 2 and ad.rank == 8
        assert ad.base_model == "smol@x"
        assert ad.metadata["kind"] == "t2l" and ad.metadata["hypernetwork"] == net.fingerprint()
        a, b = ad.weights["model.layers.3.self_attn.v_proj"]
        assert a.shape == (8, 576) and b.shape == (192, 8)
    assert ads[0].metadata["description"] == "Convert the text to uppercase."


def test_bad_descriptions(encoder: DescriptionEncoder) -> None:
    """Empty or blank descriptions and wrong types raise ValidationError; junk and huge text give finite adapters."""
    net = tiny()
    with torch.no_grad():  # make B non-zero so finiteness is tested on a real delta
        for head in net.heads.values():
            head.weight.normal_(0, 0.02)
    for bad in ([""], ["   \n"], [], ["ok", ""]):
        with pytest.raises(ValidationError):
            net.generate(bad, encoder=encoder)
    with pytest.raises(ValidationError):
        net.generate("a bare string", encoder=encoder)  # type: ignore[arg-type]
    huge = "Reply in capitals. " * 2_000
    junk = "@@## 0101 \x00\x01 ☃☃☃ }{][ " * 3
    ads = net.generate([huge, junk, "日本語で答えてください"], encoder=encoder)
    for ad in ads:
        for a, b in ad.weights.values():
            assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert len(ads[0].metadata["description"]) <= 1000
    # truncation is documented: text beyond the encoder window does not change the adapter
    tokens = encoder.tokenizer(huge, add_special_tokens=False)["input_ids"]
    assert len(tokens) > MAX_DESCRIPTION_TOKENS
    same = net.generate([huge + " Actually, answer in French."], encoder=encoder)[0]
    path = "model.layers.0.self_attn.q_proj"
    assert torch.allclose(same.weights[path][1], ads[0].weights[path][1], atol=1e-5)


def test_save_load_round_trip(tmp_path: Path, encoder: DescriptionEncoder) -> None:
    """save -> load gives the same adapters; a checkpoint for another base model is refused."""
    net = tiny("S")
    with torch.no_grad():
        net.shared_head.weight.normal_(0, 0.02)
        net.b_gate.fill_(0.5)
    d = net.save(tmp_path / "ck", metadata={"training": {"steps": 3}})
    assert json.loads((d / "config.json").read_text())["training"]["steps"] == 3
    back = T2LHypernetwork.load(d, base_fingerprint="toy@1")
    assert back.config == net.config and back.fingerprint() == net.fingerprint()
    a1 = net.generate(["Sort the words."], encoder=encoder)[0]
    a2 = back.generate(["Sort the words."], encoder=encoder)[0]
    for p in a1.weights:
        assert torch.equal(a1.weights[p][0], a2.weights[p][0]) and torch.equal(a1.weights[p][1], a2.weights[p][1])
    assert a1.delta("model.layers.1.self_attn.q_proj").abs().sum() > 0
    with pytest.raises(AdapterMismatchError):
        T2LHypernetwork.load(d, base_fingerprint="other@2")
    with pytest.raises(ModelError):
        T2LHypernetwork.load(tmp_path / "missing")
    (d / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ModelError):
        T2LHypernetwork.load(d)


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        T2LConfig(n_layers=2, module_dims=TINY_DIMS, size="XL")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        T2LConfig(n_layers=2, module_dims={})
    assert math.isclose(T2LConfig(n_layers=1, module_dims=TINY_DIMS).scaling, 16 / math.sqrt(8))


def test_generation_latency(encoder: DescriptionEncoder) -> None:
    """One adapter for SmolLM2-135M's shape (30 layers, L size) in well under a second (goal: 50 ms unloaded)."""
    net = T2LHypernetwork(T2LConfig(n_layers=30, module_dims=SMOL_DIMS, size="L")).eval()
    net.generate(["warm up"], encoder=encoder)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        net.generate(["Answer with the number only."], encoder=encoder)
        times.append(time.perf_counter() - t0)
    assert sorted(times)[2] < 2.0  # a sanity bound on a shared, overloaded CPU; bench/t2l.py reports p50/p95


def test_prompt_and_collate() -> None:
    from memory.training.t2l import IGNORE, build_prompt, collate

    assert build_prompt("Add.", "1 and 2") == "Add.\nInput: 1 and 2"
    assert build_prompt("Add.", "1 and 2", "input") == "Input: 1 and 2"
    ids, mask, labels = collate([([1, 2, 3], [IGNORE, 2, 3]), ([4], [4])], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert labels.tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]


def test_description_cache_embeds_once_and_matches_the_encoder(encoder: DescriptionEncoder) -> None:
    """Training embeds a description when it is first drawn, once, with the encoder's own embedding."""
    from memory.training.t2l import DescriptionCache

    cache = DescriptionCache(encoder, torch.device("cpu"))
    a = cache(["Join the words with commas.", "Sort the words in alphabetical order.", "Join the words with commas."])
    assert a.shape == (3, 384) and len(cache) == 2 and torch.equal(a[0], a[2])
    assert torch.allclose(a[1], encoder.encode(["Sort the words in alphabetical order."])[0], atol=1e-5)
    cache(["Join the words with commas."])
    assert len(cache) == 2


def test_ceiling_tasks_are_a_prefix_of_the_eval_sample() -> None:
    """The per-task ceilings trained by --arm all are tasks the evaluation draws, in every split."""
    from memory.evaluation.t2l import SIZES
    from memory.training.t2l import ceiling_tasks
    from memory.training.tasks import SPLITS, heldout_tasks, sample

    ceil = ceiling_tasks(2)
    assert set(ceil) == set(SPLITS)
    for split, tasks in ceil.items():
        assert len(tasks) == 2 and tasks == sample(heldout_tasks(split), SIZES["quick"]["tasks"], seed=0)[:2]
        assert all(t in heldout_tasks(split) for t in tasks)


def test_eval_arms_validation_and_plot(tmp_path: Path) -> None:
    """Unknown arms are refused; the plot draws every split, the ceiling and the curve from a result."""
    from memory.evaluation.t2l import _arms, plot

    assert _arms("t2l, base") == ["base", "t2l"] and _arms(None) == ["base", "mt_lora", "t2l", "task_lora"]
    with pytest.raises(ValidationError, match="unknown t2l arms"):
        _arms("t2l,gpt4")
    paired = {"diff": 0.1, "low": -0.05, "high": 0.2, "p_b_better": 0.8, "n": 10}
    split = {
        "n": 10,
        "tasks": ["a", "b"],
        "mean": {"base": 0.1, "mt_lora": 0.3, "t2l": 0.4},
        "paired": {"t2l_minus_base": paired, "t2l_minus_mt_lora": paired},
        "ceiling": {"tasks": ["a"], "n": 5, "mean": {"base": 0.0, "mt_lora": 0.2, "t2l": 0.2, "task_lora": 0.9}},
    }
    curve = {
        "steps": {
            "100": {s: {"t2l": 0.2, "mt_lora": 0.1} for s in ("interpolation", "composition", "unseen_family")},
            "200": {s: {"t2l": 0.3, "mt_lora": 0.2} for s in ("interpolation", "composition", "unseen_family")},
        }
    }
    result = {
        "trained_steps": 200,
        "splits": dict.fromkeys(("interpolation", "composition", "unseen_family"), split),
        "curve": curve,
    }
    path = plot(result, tmp_path / "t2l_eval.png")
    assert path.stat().st_size > 10_000 and (tmp_path / "t2l_eval_curve.png").stat().st_size > 10_000


# ------------------------------------------------------------------ slow: the real base model
@pytest.mark.slow
def test_trainer_smoke_and_resume(tmp_path: Path) -> None:
    """Two T2L steps on the real model write state, log and a loadable checkpoint; --resume continues the count."""
    from memory.models import load_base_model
    from memory.training.t2l import TrainArgs, load_lora, train

    base = load_base_model()
    args = TrainArgs(
        out=tmp_path / "run",
        size="S",
        max_steps=1,
        minutes=5,
        tasks_per_step=2,
        examples_per_task=1,
        descriptions_per_task=1,
    )
    train(args, base=base)
    args.max_steps, args.resume = 2, True
    model_dir = train(args, base=base)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1]  # step 1 logged by the first run, step 2 not a log step
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=False)["step"] == 2
    net = T2LHypernetwork.load(model_dir, base_fingerprint=base.fingerprint)
    assert json.loads((model_dir / "config.json").read_text())["training"]["trained_steps"] == 2
    assert all(torch.isfinite(p).all() for p in net.parameters())

    # --init-from: a new run starts from the artefact's weights and counts its steps on top.
    warm = TrainArgs(
        out=tmp_path / "warm", size="S", max_steps=0, minutes=5, init_from=model_dir, descriptions_per_task=1
    )
    warm_dir = train(warm, base=base)
    assert json.loads((warm_dir / "config.json").read_text())["training"]["trained_steps"] == 2
    again = T2LHypernetwork.load(warm_dir)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=False))

    # The LoRA arms warm-start from an adapter file (the scale folded into B is undone and redone exactly).
    mt = TrainArgs(
        out=tmp_path / "mt",
        arm="mt-lora",
        size="S",
        max_steps=1,
        minutes=5,
        tasks_per_step=2,
        examples_per_task=1,
        descriptions_per_task=1,
    )
    first = load_lora(train(mt, base=base))
    mt_warm = load_lora(
        train(
            TrainArgs(
                out=tmp_path / "mt2",
                arm="mt-lora",
                max_steps=0,
                minutes=5,
                init_from=tmp_path / "mt" / "model" / "adapter.safetensors",
            ),
            base=base,
        )
    )
    assert mt_warm.metadata["steps"] == "1"
    for path, (a, b) in first.weights.items():
        assert torch.allclose(mt_warm.weights[path][0], a) and torch.allclose(mt_warm.weights[path][1], b, atol=1e-6)
    offset_dir = train(
        TrainArgs(
            out=tmp_path / "offset",
            size="S",
            max_steps=1,
            minutes=5,
            init_from=model_dir,
            offset_rank=2,
            tasks_per_step=2,
            examples_per_task=1,
            descriptions_per_task=1,
        ),
        base=base,
    )
    with_offset = T2LHypernetwork.load(offset_dir)
    assert with_offset.config.offset_rank == 2
    [ad] = with_offset.generate(["Reply in capitals."])
    assert ad.rank == with_offset.config.rank + 2
    with pytest.raises(ValidationError, match="config differs"):
        train(
            TrainArgs(
                out=tmp_path / "bad", size="L", max_steps=0, minutes=5, init_from=model_dir, descriptions_per_task=1
            ),
            base=base,
        )


def test_paired_comparison_of_arms() -> None:
    """The eval's T2L-vs-arm figures are paired differences on the same rows, with a CI around them."""
    from memory.evaluation.t2l import _paired

    rows = {"base": [False] * 10, "mt_lora": [True] * 5 + [False] * 5, "t2l": [True] * 8 + [False] * 2}
    out = _paired(rows)
    assert out["t2l_minus_base"]["diff"] == 0.8 and out["t2l_minus_base"]["low"] > 0
    assert abs(out["t2l_minus_mt_lora"]["diff"] - 0.3) < 1e-9 and out["t2l_minus_mt_lora"]["n"] == 10


@pytest.mark.slow
def test_committed_checkpoint_is_finite_and_changes_outputs() -> None:
    """The shipped checkpoint loads for the default base model, is finite, and its adapter changes the logits."""
    from memory.models import load_base_model

    base = load_base_model()
    net = T2LHypernetwork.load(CHECKPOINT, base_fingerprint=base.fingerprint)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    [ad] = net.generate(["Convert the text to uppercase. Reply with the answer only."])
    ad.validate_for(base)
    assert sum(float(ad.delta(p).abs().sum()) for p in ad.weights) > 0
    ids = torch.tensor([base.chat_ids("Convert the text to uppercase.\nInput: green apple", system="")])
    with torch.no_grad():
        plain = base.model(input_ids=ids).logits[0, -1].float()
        with apply_lora(base.model, ad):
            adapted = base.model(input_ids=ids).logits[0, -1].float()
    assert torch.isfinite(adapted).all()
    assert (plain - adapted).abs().max() > 1e-2


@pytest.mark.slow
def test_train_all_then_eval_reports_three_splits(tmp_path: Path) -> None:
    """`--arm all` trains T2L, the multi-task LoRA at the same step count and one ceiling per split into an
    evaluable checkpoint; the eval reports every split with paired CIs, the ceilings, samples, a plot and the
    curve over snapshots (a plumbing test: two steps say nothing about quality)."""
    from memory.evaluation.t2l import run
    from memory.models import load_base_model
    from memory.training.t2l import TrainArgs, train

    base = load_base_model()
    args = TrainArgs(
        out=tmp_path / "run",
        arm="all",
        size="S",
        max_steps=2,
        minutes=5,
        tasks_per_step=1,
        examples_per_task=1,
        ceiling_per_split=1,
        ceiling_steps=1,
        snapshot_every=1,
        save_every=1,
    )
    ck = train(args, base=base)
    assert ck == tmp_path / "run" / "checkpoint"
    assert json.loads((ck / "config.json").read_text())["training"]["trained_steps"] == 2
    mt_meta = json.loads((tmp_path / "run" / "mt-lora" / "model" / "training.json").read_text())
    assert mt_meta["trained_steps"] == 2 and mt_meta["library"]["train"] > 1000
    ceilings = sorted(p.name for p in (ck / "baselines").glob("task-lora-*.safetensors"))
    assert len(ceilings) == 3
    assert sorted(p.name for p in (tmp_path / "run" / "t2l" / "snapshots").iterdir()) == [
        "step-0000001",
        "step-0000002",
    ]

    res = run(
        checkpoint=ck,
        output=tmp_path / "eval",
        limit=1,
        per_task=1,
        seen_tasks=0,
        ceiling_per_split=1,
        progress=False,
        base=base,
    )
    assert set(res["splits"]) == {"interpolation", "composition", "unseen_family"}
    for split in res["splits"].values():
        assert split["n"] == 1 and set(split["mean"]) == {"base", "mt_lora", "t2l"}
        assert (
            set(split["paired"]) == {"t2l_minus_base", "t2l_minus_mt_lora"}
            and split["paired"]["t2l_minus_base"]["n"] == 1
        )
        assert split["ceiling"]["n"] == 1 and "task_lora" in split["ceiling"]["mean"]
    assert res["trained_steps"] == 2 and res["curve"]["steps"].keys() == {"1", "2"}
    assert (tmp_path / "eval" / "t2l_eval.png").exists() and (tmp_path / "eval" / "t2l_eval_curve.png").exists()
    assert json.loads((tmp_path / "eval" / "t2l_eval.json").read_text())["splits"] == res["splits"]
