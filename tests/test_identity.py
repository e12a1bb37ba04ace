"""One identity and one compatibility rule for hypernetwork checkpoints (D2L, T2L) and context distillation.

Run: .venv/bin/python -m pytest tests/test_identity.py -q
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _fixtures_d2l import tiny_base

import memory.internalizers as internalizers
from memory.errors import AdapterMismatchError, ModelError
from memory.hyper import d2l, identity
from memory.hyper.t2l import T2LConfig, T2LHypernetwork
from workers.tasks import internalize_key

TINY_DIMS = {"self_attn.q_proj": (16, 16), "self_attn.v_proj": (16, 8)}


@pytest.fixture(scope="module")
def base():
    return tiny_base()


def d2l_checkpoint(base, directory: Path, base_model: str | None = None) -> str:
    cfg = d2l.D2LConfig.for_model(
        base.model.config,
        rank=3,
        bias_rank=2,
        key_rank=4,
        chunk_tokens=8,
        base_model=base.fingerprint if base_model is None else base_model,
    )
    net = d2l.D2LHypernetwork(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return d2l.save_checkpoint(net, directory, dtype=torch.bfloat16)


def t2l_net(base_model: str) -> T2LHypernetwork:
    torch.manual_seed(0)
    return T2LHypernetwork(T2LConfig(n_layers=3, module_dims=TINY_DIMS, size="S", rank=4, base_model=base_model))


def test_d2l_checkpoint_has_one_identity_on_every_path(base, tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    saved = d2l_checkpoint(base, ck)
    sha = identity.checkpoint_sha256(ck)
    assert saved == sha == d2l.checkpoint_sha256(ck)
    net = d2l.load_checkpoint(ck, base)
    assert net.checkpoint_sha256 == sha
    ad = d2l.internalize(base, ["the code is 12."], hypernet=net)[0]
    assert ad.metadata["hypernetwork_sha256"] == sha  # in the adapter blob
    row = internalizers.D2LInternalizer(ck, base).identity  # what the Hypernetwork row stores
    assert row.checkpoint_sha256 == sha and row.kind == "d2l"
    assert internalizers.resolve("auto", base, checkpoint=ck).identity == row
    assert internalizers.planned_identity("auto", base.fingerprint, checkpoint=ck) == row
    monkeypatch.setattr(internalizers, "DEFAULT_D2L", ck)
    assert internalize_key("ab" * 32, 1, "auto", base.fingerprint).endswith(f":d2l-{sha[:16]}")  # the job key

    # canonical: reformatting config.json or adding training notes keeps it; a hyper-parameter changes it
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, "extra": {"note": "re-evaluated"}}, indent=7))
    assert identity.checkpoint_sha256(ck) == sha
    (ck / "config.json").write_text(json.dumps({**cfg, "rank": cfg["rank"] + 1}))
    assert identity.checkpoint_sha256(ck) != sha


def test_t2l_checkpoint_has_one_identity_on_every_path(tmp_path):
    net = t2l_net("toy@1")
    with torch.no_grad():
        net.shared_head.weight.normal_(0, 0.02)
    in_memory = net.fingerprint()
    d = net.save(tmp_path / "ck", metadata={"training": {"steps": 3}})
    sha = identity.checkpoint_sha256(d)
    assert in_memory == sha[:16]  # what saving it wrote
    assert T2LHypernetwork.load(d, base_fingerprint="toy@1").fingerprint() == in_memory
    row = internalizers.T2LGenerator(d, SimpleNamespace(fingerprint="toy@1")).identity
    assert row.kind == "t2l" and row.checkpoint_sha256 == sha
    with torch.no_grad():
        net.b_gate.add_(1.0)  # an in-place update: another network
    assert net.fingerprint() != in_memory


def test_cd_identity_is_the_same_for_rows_and_jobs(base, tmp_path, monkeypatch):
    monkeypatch.setattr(internalizers, "DEFAULT_D2L", tmp_path / "none")
    cd = internalizers.CDInternalizer(base).identity
    assert internalizers.resolve("auto", base).identity == cd
    assert (
        internalizers.planned_identity("auto", base.fingerprint)
        == cd
        == internalizers.planned_identity("cd", base.fingerprint)
    )
    assert internalize_key("ab" * 32, 1, "cd", base.fingerprint).endswith(f":{cd.tag}")
    assert cd != internalizers.CDInternalizer(SimpleNamespace(fingerprint="other@1")).identity
    assert cd != internalizers.CDInternalizer(base, steps=3).identity


def test_an_incompatible_base_model_is_refused_the_same_way_everywhere(base, tmp_path):
    name, arch = base.fingerprint.rsplit("@", 1)
    tuned = f"{name}-tuned@{arch}"  # same architecture, other weights: not compatible either
    ck = tmp_path / "d2l"
    d2l_checkpoint(base, ck, base_model=tuned)
    t2l = t2l_net(tuned).save(tmp_path / "t2l")
    expected = f"was trained for base model {tuned!r}, not {base.fingerprint!r}"
    refusals = [
        lambda: d2l.load_checkpoint(ck, base),
        lambda: internalizers.D2LInternalizer(ck, base),
        lambda: d2l.internalize(base, ["x y"], hypernet=d2l.load_checkpoint(ck)),
        lambda: T2LHypernetwork.load(t2l, base_fingerprint=base.fingerprint),
        lambda: internalizers.T2LGenerator(t2l, base),
    ]
    for refuse in refusals:
        with pytest.raises(AdapterMismatchError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            refuse()
    # looking a checkpoint up applies the same rule: none for this base model
    assert identity.is_compatible(identity.trained_for(ck), base.fingerprint) is False
    assert internalizers.d2l_checkpoint_for(base, ck) is None
    assert isinstance(internalizers.resolve("auto", base, checkpoint=ck), internalizers.CDInternalizer)
    assert internalizers.planned_identity("auto", base.fingerprint, checkpoint=ck).kind == "cd"
    with pytest.raises(ModelError, match="no Doc-to-LoRA checkpoint"):
        internalizers.resolve("d2l", base, checkpoint=ck)
    with pytest.raises(ModelError, match="no Doc-to-LoRA checkpoint"):
        internalizers.planned_identity("d2l", base.fingerprint, checkpoint=ck)
    # and the base model it was trained for is accepted everywhere
    ok = SimpleNamespace(fingerprint=tuned, model=base.model)
    assert d2l.load_checkpoint(ck, ok).checkpoint_sha256 == identity.checkpoint_sha256(ck)
    assert T2LHypernetwork.load(t2l, base_fingerprint=tuned).fingerprint() == identity.checkpoint_sha256(t2l)[:16]


def test_unreadable_checkpoints_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="missing"):
        identity.checkpoint_sha256(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 8 + b"garbage")
    with pytest.raises(ModelError, match="safetensors"):
        identity.checkpoint_sha256(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        identity.trained_for(tmp_path)
