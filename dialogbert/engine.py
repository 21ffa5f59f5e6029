"""The engine shim: one training loop, two ways to run a step (torch or deepspeed).

The loop calls the same six things on either engine::

    engine.set_lr(lr_at(step))                  # lr is a pure function of the step
    out = engine.forward(batch)                 # a DialogBertPreTrainingOutput
    engine.backward(out.loss)                   # scaled for gradient accumulation
    engine.step()                               # steps the optimizer at the accumulation boundary
    engine.save(folder) / engine.load(folder)   # resumable optimizer (and deepspeed) state
    engine.export_state_dict(folder)            # full fp32 weights on rank 0, for save_pretrained

``TorchEngine`` is plain torch (DDP over gloo/nccl when launched by torchrun, autocast for
bf16/fp16). ``DeepSpeedEngine`` wraps ``deepspeed.initialize`` and is the only place deepspeed is
imported (lazily). Both use our own ``torch.optim.AdamW`` and the loop's LR function, so the
optimizer and schedule are the same whatever runs the step (and deepspeed never compiles its
fused Adam on CPU).

About 400 lines because the two engines are kept side by side: each of the six calls has its
torch and its deepspeed form, and reading them together is how one checks that they agree.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

DS_STATE = "deepspeed"  # sub-folder of a checkpoint with deepspeed's own files
DS_TAG = "state"


def dist_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the launcher's environment (1 process if unset)."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"train.device={name!r}: use auto, cpu or cuda")
    return torch.device("cpu")


def param_groups(model: nn.Module, weight_decay: float, encoder_lr_ratio: float = 1.0,
                 word_lr_mult: float = 1.0, memory_lr_mult: float = 1.0) -> list[dict]:
    """AdamW groups: decay on matrices, none on biases, LayerNorm weights and embeddings' norms.
    With ``encoder_lr_ratio`` != 1 the pretrained encoder (``bert.*``) learns at that share of the
    learning rate (its ``lr_mult``) while what starts fresh (the heads, the turn embedding) learns
    at the full rate: new heads on a warm-started BERT then move without dragging it along.
    With ``word_lr_mult`` != 1 the word-embedding matrix is a last group of its own, without weight
    decay (rows no batch uses stay as they are), at that multiple of the rate it would otherwise
    have: each row is one token's own memory, moved only by the batches that use it (and AdamW's
    momentum after them). The word memory's rows (dialogbert.word_memory), where the model has
    one, are likewise a group without weight decay, at ``memory_lr_mult`` times the rate."""
    words = model.get_input_embeddings().weight if word_lr_mult != 1.0 else None
    memory = getattr(model, "word_memory", None)
    memory = memory.weight if memory is not None else None
    groups: dict[tuple[bool, bool], list] = {}
    last: list[dict] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        encoder = encoder_lr_ratio != 1.0 and name.startswith("bert.")
        if p is memory:
            last.append({"params": [p], "weight_decay": 0.0, "lr_mult": memory_lr_mult})
            continue
        if p is words:
            last.append({"params": [p], "weight_decay": 0.0,
                         "lr_mult": word_lr_mult * (encoder_lr_ratio if encoder else 1.0)})
            continue
        no_decay = p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name or name.endswith(".bias")
        groups.setdefault((no_decay, encoder), []).append(p)
    return [{"params": ps, "weight_decay": 0.0 if no_decay else weight_decay,
             "lr_mult": encoder_lr_ratio if encoder else 1.0}
            for (no_decay, encoder), ps in sorted(groups.items())] + last


def build_optimizer(model: nn.Module, train) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, train.weight_decay, getattr(train, "encoder_lr_ratio", 1.0)),
                             lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps)


def _is_dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class Engine:
    """What the loop needs; see the module docstring."""
    kind = "base"
    module: nn.Module
    device: torch.device
    precision: str = "fp32"
    grad_norm: float | None = None

    def __init__(self, grad_accum: int):
        self.rank, self.local_rank, self.world_size = dist_env()
        self.grad_accum = grad_accum
        self.micro_step = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def barrier(self) -> None:
        if _is_dist():
            torch.distributed.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not _is_dist():
            return [obj]
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, value: float) -> float:
        if not _is_dist():
            return value
        t = torch.tensor([float(value)], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t)
        return float(t.item())

    def autocast(self):
        return contextlib.nullcontext()

    @torch.no_grad()
    def eval_forward(self, batch):
        with self.autocast():
            return self.module(**self.to_device(batch))

    def close(self) -> None:
        pass


class TorchEngine(Engine):
    """Plain torch: AdamW, clipping, accumulation, autocast, DDP when WORLD_SIZE > 1."""
    kind = "torch"

    def __init__(self, model: nn.Module, train):
        super().__init__(train.grad_accum)
        self.device = resolve_device(train.device, self.local_rank)
        self.precision, self.clip = train.precision, train.clip
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        if self.world_size > 1 and not _is_dist():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend, timeout=timedelta(minutes=30))
        self.module = model.to(self.device)
        from dialogbert.modeling import attention_for_device
        attention_for_device(self.module, self.device)
        self.model: nn.Module = self.module
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)
        self.optimizer = build_optimizer(self.module, train)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)

    def _at_boundary(self) -> bool:
        return (self.micro_step + 1) % self.grad_accum == 0

    def forward(self, batch):
        if self.model is not self.module:  # DDP: all-reduce gradients only on the last micro step
            self.model.require_backward_grad_sync = self._at_boundary()
        with self.autocast():
            return self.model(**self.to_device(batch))

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.grad_accum
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self) -> bool:
        boundary = self._at_boundary()
        self.micro_step += 1
        if not boundary:
            return False
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(),
                                              self.clip if self.clip > 0 else float("inf"))
        self.grad_norm = float(norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def save(self, folder: Path) -> dict:
        """Returns the engine's part of trainer_state.pt (the weights are in the HF export)."""
        return {"optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None}

    def load(self, folder: Path, state: dict) -> None:
        from safetensors.torch import load_file

        weights = load_file(str(Path(folder) / "model.safetensors"), device=str(self.device))
        missing, unexpected = self.module.load_state_dict(weights, strict=False)
        tied = set(getattr(self.module, "_tied_weights_keys", None) or {})
        missing = [k for k in missing if k not in tied and k != "cls.predictions.decoder.bias"]
        if missing or unexpected:
            raise ValueError(f"{folder}: checkpoint does not match the model (missing {missing[:5]}, "
                             f"unexpected {list(unexpected)[:5]}); resume with the run's own config")
        self.optimizer.load_state_dict(state["engine"]["optimizer"])
        if self.scaler and state["engine"].get("scaler"):
            self.scaler.load_state_dict(state["engine"]["scaler"])

    def export_state_dict(self, folder: Path) -> dict | None:
        return None  # the module holds full fp32 weights: save it as it is

    def close(self) -> None:
        if _is_dist():
            torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------- deepspeed
def load_ds_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"deepspeed config {path} not found (e.g. configs/ds_zero2.json)")
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


def fill_ds_config(ds: dict, train, micro_batch: int, world_size: int, where: str = "deepspeed config") -> dict:
    """Fill the batch, accumulation, clipping and precision keys from our config; a value the
    JSON already sets must agree with ours (``"auto"`` or absent means: take ours)."""
    ds = json.loads(json.dumps(ds))
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ValueError(f"{where}: remove the '{key}' section: the [train] section of the TOML "
                             f"config sets the optimizer (AdamW) and the LR schedule for both engines")
    ours = {"train_micro_batch_size_per_gpu": micro_batch,
            "gradient_accumulation_steps": train.grad_accum,
            "gradient_clipping": float(train.clip),
            "train_batch_size": micro_batch * train.grad_accum * world_size}
    source = {"train_micro_batch_size_per_gpu": "data.batch_size", "gradient_accumulation_steps": "train.grad_accum",
              "gradient_clipping": "train.clip", "train_batch_size": "data.batch_size * train.grad_accum * world size"}
    for key, value in ours.items():
        have = ds.get(key, "auto")
        if have != "auto" and float(have) != float(value):
            raise ValueError(f"{where}: {key}={have} disagrees with {source[key]} = {value}; set it to "
                             f'"auto" (or delete it) and the TOML config fills it in')
        ds[key] = value
    bf16 = bool(ds.get("bf16", {}).get("enabled", False))
    fp16 = bool(ds.get("fp16", {}).get("enabled", False))
    if train.precision == "bf16" and fp16 or train.precision == "fp16" and bf16:
        raise ValueError(f"{where}: train.precision={train.precision} but the JSON enables "
                         f"{'fp16' if fp16 else 'bf16'}; make them agree")
    if train.precision in ("bf16", "fp16") and not (bf16 or fp16):
        ds[train.precision] = {**ds.get(train.precision, {}), "enabled": True}
    if ds.get("zero_optimization", {}).get("stage", 0) > 0:
        ds.setdefault("zero_allow_untested_optimizer", True)  # our torch AdamW
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def ds_precision(ds: dict) -> str:
    if ds.get("bf16", {}).get("enabled", False):
        return "bf16"
    if ds.get("fp16", {}).get("enabled", False):
        return "fp16"
    return "fp32"


def validate_ds_config(ds: dict, where: str = "deepspeed config") -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(ds)
    except Exception as e:  # pydantic ValidationError, AssertionError, ...
        raise ValueError(f"{where}: deepspeed rejects the config: {e}") from None


def _single_process_env() -> None:
    """Let `pretrain(..., deepspeed_config=...)` run as one process without a launcher."""
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


class DeepSpeedEngine(Engine):
    """deepspeed.initialize with our AdamW; ZeRO stage and bf16/fp16 come from the JSON.

    On CPU deepspeed JIT-compiles a shared-memory all-reduce op at its first start (~90 s, cached
    in $TORCH_EXTENSIONS_DIR). One process never needs it, so it is skipped there; for several
    CPU processes set DIALOGBERT_DS_SHM=0 to skip it too (plain gloo all-reduce)."""
    kind = "deepspeed"

    def __init__(self, model: nn.Module, train, ds_config_path: str | os.PathLike, micro_batch: int):
        _single_process_env()
        cuda = torch.cuda.is_available() and train.device != "cpu"
        if not cuda:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        super().__init__(train.grad_accum)
        import sys

        import deepspeed
        import deepspeed.comm.torch  # noqa: F401  (`deepspeed.comm.torch` as an attribute is torch itself)

        if not cuda and (self.world_size == 1 or os.environ.get("DIALOGBERT_DS_SHM", "1") == "0"):
            sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
        where = str(ds_config_path)
        ds = fill_ds_config(load_ds_config(ds_config_path), train, micro_batch, self.world_size, where)
        deepspeed.init_distributed(dist_backend=None if cuda else "gloo",
                                   timeout=timedelta(minutes=30))
        validate_ds_config(ds, where)
        self.ds_config = ds
        self.precision = ds_precision(ds)
        self.zero_stage = int(ds.get("zero_optimization", {}).get("stage", 0))
        self.config = model.config
        self.optimizer = build_optimizer(model, train)  # our AdamW: no fused-Adam compile
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=self.optimizer, config=ds)
        self.module = self.engine.module
        self.device = self.engine.device
        from dialogbert.modeling import attention_for_device
        attention_for_device(self.module, self.device)

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:  # the wrapped optimizer steps with these groups
            g["lr"] = lr * g.get("lr_mult", 1.0)

    def forward(self, batch):
        return self.engine(**self.to_device(batch))

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # deepspeed divides by gradient_accumulation_steps

    def step(self) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        self.micro_step += 1
        if boundary:
            norm = self.engine.get_global_grad_norm()
            self.grad_norm = float(norm) if norm is not None else None
        return boundary

    @torch.no_grad()
    def eval_forward(self, batch):
        return self.engine(**self.to_device(batch))

    def save(self, folder: Path) -> dict:
        self.engine.save_checkpoint(str(Path(folder) / DS_STATE), tag=DS_TAG, save_latest=False)
        return {"deepspeed": {"tag": DS_TAG, "zero_stage": self.zero_stage, "precision": self.precision}}

    def load(self, folder: Path, state: dict) -> None:
        path = Path(folder) / DS_STATE
        if not (path / DS_TAG).is_dir():
            raise ValueError(f"{folder}: no deepspeed state in it (a torch-engine checkpoint?); resume "
                             f"it without --deepspeed, or start over with --resume none")
        load_path, _ = self.engine.load_checkpoint(str(path), tag=DS_TAG, load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
        if load_path is None:
            raise ValueError(f"{path}: deepspeed could not load the checkpoint")

    def export_state_dict(self, folder: Path) -> dict | None:
        """Full fp32 weights on rank 0 (None elsewhere): consolidated from the ZeRO partitions
        just saved in ``folder`` (works for stages 1-3 and bf16/fp16), else the module's own."""
        if self.zero_stage == 0 and self.precision == "fp32":
            return None
        self.barrier()
        if not self.is_main:
            return None
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(Path(folder) / DS_STATE), tag=DS_TAG)
        return {k: v.float().cpu() for k, v in sd.items()}

    def close(self) -> None:
        # The process group stays: deepspeed caches groups built on it, and a second run in the
        # same process (a resume in a notebook or a test) reuses it.
        pass


def make_engine(model: nn.Module, train, deepspeed_config: str | None, micro_batch: int) -> Engine:
    if deepspeed_config:
        return DeepSpeedEngine(model, train, deepspeed_config, micro_batch)
    return TorchEngine(model, train)
