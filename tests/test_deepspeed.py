"""The deepspeed engine on CPU: config filling/validation, one process in-process (train,
checkpoint, crash, resume, HF export), and two processes through the `deepspeed` launcher.

Compile time: deepspeed JIT-compiles a shared-memory all-reduce op (~90 s, 2-4 minutes on a busy
2-core machine) the first time a CPU process group starts. One process never needs it and the
engine skips it; the two-process test sets DIALOGBERT_DS_SHM=0 (plain gloo all-reduce), so these
tests compile nothing. Set DIALOGBERT_TEST_DS_SHM=1 to exercise the op (cached in
$TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import read_log, tiny_pretrain_overrides as tiny, train_losses
from dialogbert import train as train_mod
from dialogbert.config import TrainSection
from dialogbert.engine import fill_ds_config, free_port, validate_ds_config
from dialogbert.train import pretrain

pytestmark = [pytest.mark.xdist_group("deepspeed"), pytest.mark.usefixtures("one_torch_thread")]

ROOT = Path(__file__).resolve().parents[1]
ZERO2 = ROOT / "configs" / "ds_zero2.json"


@pytest.fixture
def ds_env(monkeypatch):
    """The variables a launcher would set, for one process."""
    env = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", DS_ACCELERATOR="cpu")
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    def new_port():
        monkeypatch.setenv("MASTER_PORT", str(free_port()))
    new_port()
    return new_port


def test_ds_config_is_filled_from_ours_and_mismatches_are_errors():
    train = TrainSection(grad_accum=4, clip=0.5, precision="bf16")
    ds = fill_ds_config(json.loads(ZERO2.read_text()), train, micro_batch=8, world_size=2)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"],
            ds["gradient_clipping"]) == (8, 4, 64, 0.5)
    assert ds["bf16"]["enabled"] is True and ds["zero_allow_untested_optimizer"] is True
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=2 disagrees with train\.grad_accum = 4"):
        fill_ds_config({"gradient_accumulation_steps": 2}, train, micro_batch=8, world_size=1)
    with pytest.raises(ValueError, match="optimizer"):
        fill_ds_config({"optimizer": {"type": "Adam"}}, train, micro_batch=8, world_size=1)
    with pytest.raises(ValueError, match="enables fp16"):
        fill_ds_config({"fp16": {"enabled": True}}, train, micro_batch=8, world_size=1)
    validate_ds_config(fill_ds_config({}, TrainSection(), micro_batch=8, world_size=1))
    with pytest.raises(ValueError, match="deepspeed rejects"):
        validate_ds_config({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 3,
                            "gradient_accumulation_steps": 1})


def test_deepspeed_one_process_trains_resumes_and_exports(tiny_shards, pretrain_tokenizer, tmp_path,
                                                          monkeypatch, ds_env):
    from transformers import AutoModel, AutoModelForPreTraining

    common = dict(train__max_steps=6, train__save_every=3, train__eval_every=3)
    # the torch engine, straight through: the reference curve
    ref = tmp_path / "torch"
    pretrain(None, tiny(tiny_shards, pretrain_tokenizer, ref, **common))

    def crash(step):
        if step == 5:
            raise KeyboardInterrupt
    out = tmp_path / "ds"
    monkeypatch.setattr(train_mod, "_after_step", crash)
    with pytest.raises(KeyboardInterrupt):
        pretrain(None, tiny(tiny_shards, pretrain_tokenizer, out, **common), deepspeed_config=str(ZERO2))
    assert [s for s, _ in train_mod.list_checkpoints(out)] == [3]
    assert (out / "checkpoints" / "step-3" / "deepspeed" / "state").is_dir()
    monkeypatch.setattr(train_mod, "_after_step", lambda step: None)
    ds_env()  # a fresh port for the new process group
    final = pretrain(None, tiny(tiny_shards, pretrain_tokenizer, out, **common), deepspeed_config=str(ZERO2))
    assert final == out / "checkpoints" / "step-6"

    # ZeRO-2 in fp32 with our AdamW is the same optimisation as the torch engine
    a, b = train_losses(ref), train_losses(out)
    assert sorted(b) == list(range(1, 7))
    for s in range(1, 7):
        assert math.isclose(a[s], b[s], abs_tol=1e-4), (s, a[s], b[s])

    enc = AutoModel.from_pretrained(final)
    full = AutoModelForPreTraining.from_pretrained(final)
    assert enc.config.model_type == "dialogbert"
    ref_full = AutoModelForPreTraining.from_pretrained(ref / "checkpoints" / "step-6")
    for (name, p), q in zip(full.named_parameters(), ref_full.parameters()):
        assert torch.allclose(p, q, atol=1e-4), name


def test_deepspeed_launcher_two_cpu_processes(tiny_shards, pretrain_tokenizer, tmp_path):
    from transformers import AutoModel

    out = tmp_path / "run"
    cfg = tmp_path / "tiny_ds.toml"
    overrides = tiny(tiny_shards, pretrain_tokenizer, out, train__max_steps=4, train__save_every=2,
                     train__eval_every=2)
    sections: dict[str, list[str]] = {}
    for item in overrides:  # the same settings as a TOML file, the way a user launches it
        key, value = item.split("=", 1)
        section, name = key.split(".")
        if value in ("True", "False"):
            literal = value.lower()
        else:
            try:
                float(value)
                literal = value
            except ValueError:
                literal = json.dumps(value)
        sections.setdefault(section, []).append(f"{name} = {literal}")
    lines: list[str] = []
    for section, body in sections.items():
        lines += [f"[{section}]", *body, ""]
    cfg.write_text("\n".join(lines))

    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if os.environ.get("DIALOGBERT_TEST_DS_SHM") != "1":
        env["DIALOGBERT_DS_SHM"] = "0"  # skip the shared-memory op compile (see the module docstring)
    launcher = Path(sys.executable).parent / "deepspeed"
    cmd = [str(launcher), "--num_gpus", "2", "--master_port", str(free_port()), "--module", "dialogbert.cli",
           "pretrain", "--config", str(cfg), "--deepspeed", str(ZERO2), "train.progress=false"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    final = out / "checkpoints" / "step-4"
    assert (final / "model.safetensors").is_file()
    assert sorted(p.name for p in (final / "deepspeed" / "state").iterdir() if "optim_states" in p.name) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    state = torch.load(final / "trainer_state.pt", map_location="cpu", weights_only=False)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert state["ranks"][0]["stream"]["rank"] == 0 and state["ranks"][1]["stream"]["rank"] == 1
    assert sorted(train_losses(out)) == [1, 2, 3, 4]
    assert AutoModel.from_pretrained(final).config.num_hidden_layers == 2
