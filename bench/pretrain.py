"""Pretraining step benchmark: our stream + model vs transformers' BertForPreTraining, padded.

    .venv/bin/python bench/pretrain.py                       # CPU, 1,024 examples, 4x256 model
    .venv/bin/python bench/pretrain.py --examples 4096 --hidden 768 --layers 12 --heads 12 \\
        --intermediate 3072 --peak-tflops 989                # a GPU: bf16, MFU against 989 TFLOP/s
    .venv/bin/python bench/pretrain.py --base runs/demo/base --precision bf16 --threads 2
                                                             # the demo's model: the e5 warm start

``--base DIR`` (a DialogBERT folder such as the demo's ``runs/demo/base``, the pruned e5 warm start)
measures the model the product pretrains: its shape, its tokenizer and, in our arm, its weights
(the pretraining heads fresh); the reference arm is a BertForPreTraining of the same shape
(random weights: the time of a step does not depend on them).

Both arms train the same-sized model (AdamW step, dropout on) on the SAME examples (the first
``--examples`` examples of the bundled sample corpus's train split, as PretrainStream makes them,
with the same 15% masking rate and next-turn labels):

* ours: ``PretrainStream`` batches (length-bucketed, padded to a multiple of 8) and
  ``DialogBertForPreTraining``, whose MLM head decodes only the masked positions, with the
  attention kernel the training engine picks for the device (``attention_for_device``: BERT's
  plain matmuls on a CPU; transformers' default, SDPA, in the reference);
* reference: the examples in stream order, ``batch_size`` at a time, padded to ``max_length``,
  into ``BertForPreTraining`` (full-vocabulary logits at every position);
* with ``--ablate``, a third arm: our model on the reference's padded batches (the head alone).

Figure: useful (non-padding) tokens per second, and the ratio ours / reference. Peak memory:
``torch.cuda.max_memory_allocated`` on GPU; on CPU the peak RSS of the arm's own process (each
arm runs in a fresh subprocess) and its growth once the model and data are built. MFU (GPU, or
wherever ``--peak-tflops`` is given) = 6 x parameters x useful tokens/s / peak FLOP/s.

Writes only the ``## Pretraining`` section of docs/benchmarks.md (re-read just before writing).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "data" / "sample"
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Pretraining"


# ------------------------------------------------------------------------------- data
def build_corpus(folder: Path, vocab_size: int, train: bool = True) -> tuple[Path, Path]:
    """Shards from the bundled XPersona-ko dialogues and ChatbotData pairs, and a tokenizer
    (``train=False``: the shards only, for a model that brings its own)."""
    import hashlib

    from dialogbert.tokenizer import train_tokenizer
    from preprocess.schema import Conversation, Turn, write_shard

    shards, tok = folder / "shards", folder / "tokenizer"
    if (tok / "tokenizer.json").is_file() or (not train and shards.is_dir()):
        return shards, tok
    shards.mkdir(parents=True, exist_ok=True)

    def cid(*parts: str) -> str:
        return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]

    convs = []
    for name in ("Ko_persona_split_valid_human_annotated.json", "Ko_persona_split_test_human_annotated.json"):
        for i, d in enumerate(json.loads((SAMPLE / "xpersona-ko" / name).read_text("utf-8"))):
            turns = []
            for u, r in d["dialogue"]:
                turns += [Turn("S1", u, [u]), Turn("S2", r, [r])]
            convs.append(Conversation(cid(name, str(i)), "xpersona", "ko", turns))
    with open(SAMPLE / "chatbotdata-ko" / "ChatbotData.csv", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            convs.append(Conversation(cid("chatbotdata", str(i)), "chatbotdata", "ko",
                                      [Turn("S1", row["Q"], [row["Q"]]), Turn("S2", row["A"], [row["A"]])]))
    half = len(convs) // 2
    write_shard(shards / "shard-00000.jsonl", convs[:half])
    write_shard(shards / "shard-00001.jsonl", convs[half:])
    if train:
        train_tokenizer(shards, tok, vocab_size=vocab_size)
    return shards, tok


def our_batches(stream, n: int) -> list[dict]:
    """The stream's first n examples: with shuffle_buffer = n they are one bucketed flush."""
    out, seen = [], 0
    for batch in stream:
        out.append(batch)
        seen += batch["input_ids"].shape[0]
        if seen >= n:
            break
    if seen != n:
        raise SystemExit(f"the stream gave {seen} examples, expected {n}: lower --examples")
    return out


def reference_batches(stream, n: int, max_length: int) -> list[dict]:
    """The same n examples in stream order, batch_size at a time, padded to max_length."""
    from itertools import islice

    import torch
    import torch.nn.functional as F

    from dialogbert.data import MlmCollator

    collate = MlmCollator(stream.tokenizer, stream.cfg)
    items = list(islice(stream.examples(0), n))
    out = []
    bs = stream.cfg.batch_size
    for i in range(0, len(items), bs):
        chunk = items[i:i + bs]
        g = torch.Generator().manual_seed(i)
        b = collate([f for f, _ in chunk], generator=g)
        pad = max_length - b["input_ids"].shape[1]
        fills = {"input_ids": stream.tokenizer.pad_token_id, "labels": -100}
        b = {k: F.pad(v, (0, pad), value=fills.get(k, 0)) for k, v in b.items()}
        b["next_sentence_label"] = torch.tensor([lab for _, lab in chunk], dtype=torch.long)
        out.append(b)
    return out


# ------------------------------------------------------------------------------- one arm
def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


ARMS = ("ours", "reference", "ours-model-padded")


def prepare(a, arm: str) -> dict:
    """Model, optimizer, batches and a train-step function for one arm."""
    import torch
    from transformers import BertConfig, BertForPreTraining

    from dialogbert.data import DataConfig, PretrainStream
    from dialogbert.modeling import DialogBertConfig, DialogBertForPreTraining
    from dialogbert.tokenizer import load_tokenizer

    torch.manual_seed(0)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    precision = a.precision or ("bf16" if device.type == "cuda" else "fp32")
    if a.base:
        from dialogbert.tokenizer import adopt_tokenizer
        tok = adopt_tokenizer(a.base)   # as `dialogbert pretrain` takes the tokenizer of model.init_from
    else:
        tok = load_tokenizer(a.tokenizer)
    cfg = DataConfig(max_length=a.max_length, batch_size=a.batch_size, shuffle_buffer=a.examples)
    stream = PretrainStream(a.shards, tok, cfg, split="train", seed=0)
    common = dict(vocab_size=len(tok), hidden_size=a.hidden, num_hidden_layers=a.layers,
                  num_attention_heads=a.heads, intermediate_size=a.intermediate,
                  max_position_embeddings=a.positions or a.max_length, pad_token_id=tok.pad_token_id)
    if arm == "ours":
        batches = our_batches(iter(stream), a.examples)
    else:
        batches = reference_batches(stream, a.examples, a.max_length)
    if arm == "reference":
        for b in batches:
            b.pop("turn_ids")  # BERT has no turn embedding (it would silently ignore the keyword)
        model = BertForPreTraining(BertConfig(type_vocab_size=cfg.num_speakers, **common))
    elif a.base:  # the warm start's encoder weights, the heads fresh
        model = DialogBertForPreTraining.from_pretrained(a.base)
        if model.config.vocab_size != len(tok):
            model.resize_token_embeddings(len(tok))
    else:
        model = DialogBertForPreTraining(DialogBertConfig(max_turns=cfg.max_turns, num_speakers=cfg.num_speakers,
                                                          **common))
    if arm == "ours-model-padded":  # the reference's padded batches, our model and head
        for b in batches:
            b["next_turn_label"] = b.pop("next_sentence_label")
    model.to(device).train()
    if arm != "reference":  # the attention kernel `dialogbert pretrain`'s engine picks for the device
        from dialogbert.modeling import attention_for_device
        attention_for_device(model, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(b):
        b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"arm": arm, "device": device, "precision": precision, "batches": batches, "step": step,
            "params": sum(p.numel() for p in model.parameters())}


def sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_arms(a, arms: list[str]) -> dict:
    """All arms in one process, interleaved for --rounds rounds; the best round counts (the
    machine's other load only ever slows a round down)."""
    import torch

    torch.set_num_threads(a.threads)
    runs = [prepare(a, arm) for arm in arms]
    for r in runs:
        for b in r["batches"][: a.warmup]:
            r["step"](b)
    times: dict[str, list[float]] = {r["arm"]: [] for r in runs}
    for _ in range(a.rounds):
        for r in runs:
            sync(r["device"])
            t0 = time.perf_counter()
            for b in r["batches"]:
                r["step"](b)
            sync(r["device"])
            times[r["arm"]].append(time.perf_counter() - t0)
    out = {}
    for r in runs:
        bs = r["batches"]
        useful = sum(int(b["attention_mask"].sum()) for b in bs)
        padded = sum(b["attention_mask"].numel() for b in bs)
        dt = min(times[r["arm"]])
        res = {"arm": r["arm"], "device": str(r["device"]), "precision": r["precision"], "params": r["params"],
               "examples": sum(b["input_ids"].shape[0] for b in bs), "batches": len(bs), "useful_tokens": useful,
               "padded_tokens": padded, "seconds": dt, "rounds_s": times[r["arm"]], "useful_tok_s": useful / dt}
        if a.peak_tflops:
            res["mfu"] = 6 * r["params"] * res["useful_tok_s"] / (a.peak_tflops * 1e12)
        out[r["arm"]] = res
    return out


def memory_arm(a, arm: str) -> dict:
    """Peak memory of one arm in a fresh process: its largest batches (they set the peak).
    GPU: max_memory_allocated; CPU: peak RSS and its growth over the RSS before training."""
    import torch

    torch.set_num_threads(a.threads)
    r = prepare(a, arm)
    bs = sorted(r["batches"], key=lambda b: b["attention_mask"].numel(), reverse=True)[:4]
    if r["device"].type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = rss_mib()
    for b in bs:
        r["step"](b)
    sync(r["device"])
    if r["device"].type == "cuda":
        return {"peak_mem_mib": torch.cuda.max_memory_allocated() / 2**20}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mem_mib": peak, "mem_growth_mib": max(0.0, peak - rss0)}


# ------------------------------------------------------------------------------- report
def write_section(text: str) -> None:
    body = DOC.read_text("utf-8") if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\s*$.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(body):
        body = pattern.sub(lambda _: text.rstrip() + "\n\n", body, count=1)
    else:
        body = body.rstrip() + "\n\n" + text.rstrip() + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    tmp = DOC.with_name(f".{DOC.name}.tmp-{os.getpid()}")
    tmp.write_text(body.rstrip() + "\n", "utf-8")
    os.replace(tmp, DOC)


def machine() -> str:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu or platform.processor()}), Python {platform.python_version()}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared machine)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    p.add_argument("--rounds", type=int, default=2, help="timed passes per arm, interleaved; the best counts")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default=None, help="fp32 (CPU default) or bf16 (GPU default)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s of the device, for MFU")
    p.add_argument("--ablate", action="store_true", help="add our model on the padded batches")
    p.add_argument("--data", default=None, help="folder for the bench shards + tokenizer (default: a temp dir)")
    p.add_argument("--base", default=None, metavar="DIR",
                   help="a DialogBERT folder (the demo's runs/demo/base): its shape, tokenizer and weights "
                        "instead of --hidden/--layers/--heads/--intermediate/--vocab")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    # internal: run one arm in this process
    p.add_argument("--arm", default=None, help=argparse.SUPPRESS)
    p.add_argument("--shards", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", default=None, help=argparse.SUPPRESS)
    p.add_argument("--arms", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.positions = None
    if a.base:  # the shape is the folder's
        theirs = json.loads((Path(a.base) / "config.json").read_text("utf-8"))
        a.hidden, a.layers, a.heads = theirs["hidden_size"], theirs["num_hidden_layers"], theirs["num_attention_heads"]
        a.intermediate, a.vocab, a.positions = (theirs["intermediate_size"], theirs["vocab_size"],
                                                theirs["max_position_embeddings"])
    if a.arm == "time":
        print(json.dumps(time_arms(a, a.arms.split(","))))
        return 0
    if a.arm:
        print(json.dumps(memory_arm(a, a.arm)))
        return 0

    tmp = None
    if a.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-pretrain-")
        a.data = tmp.name
    shards, tok = build_corpus(Path(a.data), a.vocab, train=not a.base)
    if a.base:
        tok = Path(a.base)
    arms = ["ours", "reference"] + (["ours-model-padded"] if a.ablate else [])
    passthrough = [x for x in sys.argv[1:] if x not in ("--no-write", "--ablate")]

    def child(*extra: str) -> dict:
        cmd = [sys.executable, __file__, *passthrough, *extra, "--shards", str(shards), "--tokenizer", str(tok)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(proc.returncode)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    results = child("--arm", "time", "--arms", ",".join(arms))
    for arm in arms:
        results[arm].update(child("--arm", arm))
        r = results[arm]
        print(f"{arm:>18}: {r['useful_tok_s']:,.0f} useful tok/s (rounds {', '.join(f'{x:.1f}' for x in r['rounds_s'])} s), "
              f"peak {r['peak_mem_mib']:,.0f} MiB", flush=True)
    ours, ref = results["ours"], results["reference"]
    ratio = ours["useful_tok_s"] / ref["useful_tok_s"]
    cuda = ours["device"].startswith("cuda")
    mem_col = "peak allocated MiB" if cuda else "peak RSS MiB (growth)"
    rows = []
    for arm in arms:
        r = results[arm]
        mem = (f"{r['peak_mem_mib']:,.0f}" if cuda else f"{r['peak_mem_mib']:,.0f} (+{r['mem_growth_mib']:,.0f})")
        mfu = f" | {100 * r['mfu']:.1f}%" if "mfu" in r else ""
        name = {"ours": "ours: bucketed stream + DialogBERT (masked-only MLM head)",
                "reference": "reference: padded to max_length + BertForPreTraining",
                "ours-model-padded": "ablation: padded batches + DialogBERT head"}[arm]
        rows.append(f"| {name} | {r['examples']:,} | {r['batches']} | {r['useful_tokens']:,} | "
                    f"{r['useful_tokens'] / r['padded_tokens']:.0%} | {r['seconds']:.1f} | "
                    f"{r['useful_tok_s']:,.0f} | {r['useful_tok_s'] / ref['useful_tok_s']:.2f}x | {mem}{mfu} |")
    cmd_line = "`.venv/bin/python bench/pretrain.py " + " ".join(passthrough + (["--ablate"] if a.ablate else [])) + "`"
    load = os.getloadavg()[0]
    text = "\n".join([
        SECTION, "",
        f"Command: {cmd_line}", "",
        f"Machine: {machine()}, {ours['device']}, {ours['precision']}, {a.threads} torch thread(s), load average "
        f"{load:.1f} at the end (shared machine: compare the ratio, not the absolute numbers). Model: "
        + (f"the DialogBERT of `{a.base}` (the e5 warm start, its tokenizer; the reference a BertForPreTraining "
           f"of its shape), " if a.base else "")
        + f"{a.layers} layers x {a.hidden} hidden, {a.heads} heads, vocabulary {a.vocab} "
        f"({ours['params'] / 1e6:.1f}M parameters); max_length {a.max_length}, batch size {a.batch_size}; "
        f"the same {ours['examples']:,} training examples of the bundled sample corpus in every arm; one "
        f"AdamW step per batch, {a.warmup} untimed warm-up batches; the arms are timed in one "
        f"process, interleaved, {a.rounds} rounds, best round counted; peak memory of each arm in a fresh process "
        f"over its 4 largest batches.", "",
        f"| arm | examples | batches | useful tokens | useful share | s | useful tokens/s | vs reference | {mem_col}"
        + (" | MFU |" if "mfu" in ours else " |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if "mfu" in ours else ""),
        *rows, "",
        f"Goal: >= 2x the reference's useful tokens/s. Measured: **{ratio:.2f}x** "
        f"({'met' if ratio >= 2 else 'not met'}).",
    ])
    print()
    print(text)
    if not a.no_write:
        write_section(text)
        print(f"\nwrote the {SECTION} section of {DOC}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
