"""Checkpoint folders and the state a resumed run needs: complete ``checkpoints/step-N`` folders
found, chosen and published atomically, and the RNG states saved with them. Shared by pretraining
(dialogbert.train) and fine-tuning (retrieval.finetune), so it is apart from either loop."""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

CKPT_RE = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.pt"


def list_checkpoints(out: str | os.PathLike, state_file: str = STATE_FILE) -> list[tuple[int, Path]]:
    """Complete checkpoints (step-N with a trainer state, ``state_file``), oldest first. Shared with
    fine-tuning (retrieval.finetune), whose state file is trainer_state.json."""
    root = Path(out) / "checkpoints"
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = CKPT_RE.match(p.name)
            if m and (p / state_file).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def find_resume(out: Path, resume: str | None, state_file: str = STATE_FILE) -> Path | None:
    """The checkpoint to resume from: None for "none" (or no checkpoint yet with "auto"), the
    newest complete one for "auto", else the step-N folder named (which must be complete)."""
    if resume in (None, "", "none", "no", "false"):
        return None
    if resume == "auto":
        ckpts = list_checkpoints(out, state_file)
        return ckpts[-1][1] if ckpts else None
    path = Path(resume)
    if not (path / state_file).is_file():
        raise FileNotFoundError(f"resume={resume}: not a complete checkpoint (no {state_file}); use "
                                f"auto, none or a checkpoints/step-N folder")
    return path


def publish_checkpoint(tmp: Path, final: Path, keep: int, state_file: str = STATE_FILE) -> Path:
    """Rename the complete checkpoint ``tmp`` to ``final`` (<out>/checkpoints/step-N), replacing
    one there, then remove all but the newest ``keep`` (0: keep all): a killed run never leaves
    half a checkpoint where list_checkpoints looks."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in list_checkpoints(final.parent.parent, state_file)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
