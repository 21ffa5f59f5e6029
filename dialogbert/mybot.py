"""`dialogbert bot`: your own KakaoTalk/LINE exports become your chat bot, in one command.

    build_bot(exports, out, model=None, reply_as=())  -> report (also out/bot.json)
    add_to_bot(exports, out, model=None, reply_as=()) -> report: the bot in ``out`` grown
    run_bot(...)                                       -> the CLI: build or add, report, serve

    exports --preprocess.pipeline.run--> out/shards/     anonymized, as `dialogbert preprocess`
    shards  --retrieval.index.build_index--> out/index/  replies of *these* conversations, encoded
                                                         by a dialog model (default runs/demo/encoder)
            --retrieval.ranker.fit_for_index-->          ranker.json (the dual encoder alone when the
                                                         carve-out has too few examples)
    --add   --> out/shards-2/, ... and the same index, appended to (build_index(add=True))

Reading the exports (names checked, input paths scrubbed, conversations already held dropped) is
dialogbert.mybot_input; the report, dialogbert.mybot_report.

With ``finetune_minutes`` (the CLI's ``--finetune-minutes M``; 0, the default: never) the dialog
model is first fine-tuned on the user's own (context, reply) pairs (retrieval.finetune,
configs/finetune_e5.toml; their train split less a tenth carved out; every speaker's replies:
``reply_as`` chooses what is served, not what the model learns from), and both models are scored
on that carve-out (R10@1, the protocol's measure, on the same examples): the fine-tuned one
(``out/encoder``) indexes the replies only when it scores measurably higher there (by more than
two standard errors of the paired per-example difference, :func:`helps`: a few dozen held-out
turns cannot tell a small gain from chance); otherwise it is deleted and the model it started from
is used. bot.json records both scores. Too few pairs to train on or to measure: no fine-tuning,
with the reason. Off by default: on four exports of 700-2,100 pairs, three minutes were never
measurably better than the demo's model
(docs/experiments/2026-12-06-serving-batching-and-user-fine-tuning.md).

``reply_as`` (display names as the export shows them, e.g. ``박영우 소마`` or ``회원님``): only
turns of those speakers enter the index, the style the user wants to talk to. Pseudonyms are per
session, so the names are matched while preprocessing (``run(mark_speakers=...)``: those turns
carry ``"marked": true``) and are never written: bot.json records how many names were given.

No file under ``out`` holds a ``reply_as`` name or an input's path: export file names often name
a person (KakaoTalk and LINE name the file after the chat room, which is the other person in a
one-to-one chat), so files under ``out`` call the inputs ``export 1``, ``export 2``, ... (with
their sha256), and the preprocessor's part files (whose markers name the inputs) are removed.
The texts are anonymized as by `dialogbert preprocess`. The terminal report shows the paths, and
the display names in the exports when a ``reply_as`` name matches nobody.

Every conversation is indexed, the test split's too (``build_index(split=None)``): nobody
evaluates a user's own bot on a held-out split, and a tenth of their replies would be lost.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from dialogbert.mybot_input import check_names, drop_known, export_files, preprocess_exports
from dialogbert.mybot_report import BOT_FILE, for_file, print_report, read_report, serves
from preprocess.schema import atomic_write_text, read_shards

ROOT = Path(__file__).resolve().parents[1]
SHARDS, INDEX = "shards", "index"
INFO_FILE = "index_info.json"  # retrieval.index's (imported lazily there, as everywhere in dialogbert/)
DEFAULT_MODELS = (Path("runs/demo/encoder"), ROOT / "runs" / "demo" / "encoder")  # what `make demo` fine-tunes
NGRAM_MINUTES = 2.0   # the ranker's n-gram encoder's training budget (a user's chats: seconds to minutes)
FINETUNE_MINUTES = 0.0  # fine-tuning the dialog model on the user's own pairs: off unless asked for
FINETUNE_CONFIG = ROOT / "configs" / "finetune_e5.toml"
FINETUNE_MIN_PAIRS = 64   # fewer training pairs: not worth a fine-tuning run
MEASURE_MIN_EXAMPLES = 20  # carve-out examples (with 10 distinct replies) needed to tell whether it helped
TUNED = "encoder"          # the fine-tuned model's folder under the bot's


# --------------------------------------------------------------------------- inputs and model

def resolve_model(model: str | os.PathLike | None) -> Path:
    """The dialog model's folder: ``model``, else the demo's fine-tuned encoder. Never downloads."""
    if model is not None:
        p = Path(model)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"--model {p}: no config.json there; pass an encoder folder, e.g. "
                                    f"runs/demo/encoder (written by `make demo`) or the --out of `dialogbert finetune`")
        return p
    for p in DEFAULT_MODELS:
        if (p / "config.json").is_file():
            return p
    raise FileNotFoundError("no dialog model: run `make demo` first (it fine-tunes runs/demo/encoder, which "
                            "this command uses by default), or pass --model DIR (an encoder folder from "
                            "`dialogbert finetune`); nothing is downloaded")


# --------------------------------------------------------------------------- the index

def chosen_replies(chosen: Iterable[str]):
    """retrieval.index's response filter, restricted to texts that a chosen speaker wrote (a
    reply is stored once, whoever else wrote the same text; the context memory keeps every
    context that such a text answered). Others' turns are counted as ``other_speaker``."""
    from retrieval.index import ResponseFilter
    chosen = frozenset(chosen)

    class ChosenReplies(ResponseFilter):
        def reason(self, text: str, contains_pii) -> str | None:
            if text.strip() not in chosen:
                return "other_speaker"
            return super().reason(text, contains_pii)

    return ChosenReplies()


def _replies(shards: Path, marked_only: bool) -> dict:
    """What the shards offer as replies: the chosen speakers' turns (all turns without
    ``marked_only``), and where they go: a first turn answers nothing, every other is a candidate."""
    c = Counter()
    chosen: set[str] = set()
    for conv in read_shards(shards):
        c["conversations"] += 1
        for t, turn in enumerate(conv.turns):
            if marked_only and not turn.marked:
                continue
            c["turns"] += 1
            if t == 0:
                c["first_turns"] += 1
            else:
                chosen.add(turn.text.strip())
                c["candidates"] += 1
    keys = ("conversations", "turns", "first_turns", "candidates")
    return {"counts": {k: c[k] for k in keys}, "chosen": chosen}


def _index(model: Path, shards: Path, index: Path, replies: dict, reply_as: Sequence[str], add: bool) -> dict:
    from retrieval.index import build_index
    filt = chosen_replies(replies["chosen"]) if reply_as else None
    before = json.loads((index / INFO_FILE).read_text("utf-8")) if add else {"count": 0, "dropped": {}}
    try:
        build_index(model, shards, index, factory="Flat", add=add, filt=filt, split=None)
        if add:  # the ranker's files (own encoders' vectors, TF-IDF cache) for the new replies
            from retrieval.ranker import update_for_index
            update_for_index(index)
    except ValueError as e:
        if "no responses passed the filters" not in str(e):
            raise
        raise ValueError(f"no usable reply in these exports{' by --reply-as' if reply_as else ''}: {e}. "
                         "Replies holding personal data or placeholders such as [NAME] are never served; "
                         "add more exports") from None
    info = json.loads((index / INFO_FILE).read_text("utf-8"))
    dropped = {k: v - before["dropped"].get(k, 0) for k, v in info.get("dropped", {}).items()}
    return {"added": info["count"] - before["count"], "left_out": {k: v for k, v in dropped.items() if v}}


def _score_on(model: Path, evaluator) -> "np.ndarray":
    """Per carve-out example, 1.0 where the dialog model in ``model`` ranks the true reply first
    among the evaluator's 10 candidates (R10@1's terms), else 0.0."""
    import numpy as np

    from retrieval.encoder import Encoder
    from retrieval.evaluate import EncoderScorer
    from retrieval.metrics import ranks
    scores = EncoderScorer(Encoder.load(model)).score(evaluator.contexts, evaluator.candidates.texts)
    return (ranks(np.asarray(scores)[:, :10]) == 1).astype(np.float64)


def helps(before, after) -> tuple[bool, float, float]:
    """(whether ``after`` is measurably better, the mean gain, its standard error): paired over the
    same examples, a gain of more than two standard errors of the per-example differences."""
    import numpy as np
    d = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    gain = float(d.mean()) if len(d) else 0.0
    return bool(gain > 0 and gain > 2 * se), gain, se


def _finetune(model: Path, shards: Path, out: Path, minutes: float, progress: bool) -> tuple[Path, dict]:
    """(the model to index with, what happened): ``model`` fine-tuned on the user's pairs for
    ``minutes`` when that scores higher on the carve-out of their pairs, else ``model``."""
    if minutes <= 0:
        return model, {"note": "not asked for (--finetune-minutes 0)"}
    tuned = out / TUNED
    if model.resolve() == tuned.resolve():
        return model, {"note": f"the model is this bot's own fine-tuned {TUNED}/: used as it is"}
    from retrieval.evaluate import RetrievalEvaluator
    from retrieval.examples import train_examples, validation_examples
    from retrieval.finetune import finetune, load_config
    D = load_config(FINETUNE_CONFIG).data
    pairs = sum(1 for _ in train_examples(shards, D.valid_fraction, False, D.context_turns))  # counted, streamed
    exs = validation_examples(shards, D.valid_fraction, 1000, context_turns=D.context_turns)
    replies = len({e.response for e in exs})
    if pairs < FINETUNE_MIN_PAIRS or len(exs) < MEASURE_MIN_EXAMPLES or replies < 10:
        return model, {"pairs": pairs, "carve_out": len(exs),
                       "note": f"{pairs} training pairs and {len(exs)} carve-out examples ({replies} distinct "
                               f"replies): too few to fine-tune on (>= {FINETUNE_MIN_PAIRS}) or to measure it "
                               f"(>= {MEASURE_MIN_EXAMPLES}, 10 replies): the model as given"}
    ev = RetrievalEvaluator(exs, n=10)
    before = _score_on(model, ev)
    if tuned.exists():
        shutil.rmtree(tuned)   # a rebuild starts from the given model again, never resumes an old run
    finetune(model, shards, tuned, config_path=FINETUNE_CONFIG,
             overrides=[f"train.max_minutes={minutes}"], progress=progress)
    after = _score_on(tuned, ev)
    kept, gain, se = helps(before, after)
    steps = json.loads((tuned / "finetune.json").read_text("utf-8"))["steps"]
    done = {"pairs": pairs, "carve_out": len(exs), "minutes": minutes, "steps": steps,
            "R10@1_before": round(float(before.mean()), 4), "R10@1_after": round(float(after.mean()), 4),
            "gain_se": round(se, 4), "kept": kept}
    if kept:
        return tuned, done
    shutil.rmtree(tuned)
    return model, done


def _fit_ranker(index: Path, shards: Path, model: Path) -> dict:
    from retrieval.ngram import NgramSettings
    from retrieval.ranker import carve_out, fit_for_index
    # the carve-out the model was fine-tuned without (0.1 when it has none), on every source of the
    # user's exports: the model's data.sources name corpora that are not theirs
    fraction = (carve_out(model) or (0.0, None))[0] or 0.1
    ranker = fit_for_index(index, shards, fraction=fraction, use=False,
                           ngram_settings=NgramSettings(max_minutes=NGRAM_MINUTES))
    fitted = ranker.fitted_on
    if "dual_only" not in fitted:  # fit_for_index fitted nothing: too few validation examples
        return {"features": ["dual"], "examples": fitted.get("examples", 0),
                "note": f"{fitted.get('examples', 0)} validation examples, too few to fit a ranker: the dual encoder alone"}
    return {"features": list(ranker.active), "examples": fitted.get("examples"),
            "dual_only": fitted.get("dual_only"), "fitted": fitted.get("fitted")}


# --------------------------------------------------------------------------- build and add

def _build(exports, out, model, reply_as, add: bool, workers: int, progress: bool,
           finetune_minutes: float = FINETUNE_MINUTES) -> dict:
    out = Path(out)
    reply_as = [n for n in (reply_as or ()) if n.strip()]
    old = _load_report(out) if add else None
    if add:
        if old.get("reply_as") and not reply_as:
            raise ValueError(f"{out} answers only as the speakers chosen when it was built: pass --reply-as "
                             f"NAME again with --add (the names are stored nowhere)")
        if reply_as and not old.get("reply_as"):
            raise ValueError(f"{out} answers as every speaker of its exports: rebuild it with --reply-as to "
                             f"choose whose replies it gives (`dialogbert bot EXPORT... --reply-as NAME --out {out}`)")
        if model is None:
            info = json.loads((out / INDEX / INFO_FILE).read_text("utf-8"))
            model = info.get("model") or old.get("model")
            if not model or not (Path(model) / "config.json").is_file():
                raise FileNotFoundError(f"{out} was built with the model {model}, which is not there any more: "
                                        f"pass --model DIR (the same model: the index checks its hash)")
    model = resolve_model(model)
    files, skipped = export_files(exports, out)
    names = check_names(reply_as, files) if reply_as else None

    if add:
        n = len(old["shards"]) + 1
        while (out / f"{SHARDS}-{n}").exists():
            n += 1
        shards = out / f"{SHARDS}-{n}"
    else:
        shards = out / SHARDS
        previous = out / BOT_FILE
        if previous.is_file():  # a rebuild: the folders of earlier --add runs belong to the old bot
            for d in json.loads(previous.read_text("utf-8")).get("shards", []):
                if d != SHARDS and d.startswith(SHARDS + "-") and (out / d).is_dir():
                    shutil.rmtree(out / d)
    out.mkdir(parents=True, exist_ok=True)
    summary, labels = preprocess_exports(files, shards, reply_as, workers, progress)
    already = 0
    if add and summary["totals"]["conversations"]:
        from preprocess.pipeline import content_hash
        known = {content_hash(c.to_dict()["turns"]) for d in old["shards"] if (out / d).is_dir()
                 for c in read_shards(out / d)}
        already = drop_known(shards, known, summary)
    fresh = summary["totals"]["conversations"]
    if not fresh and not add:
        raise ValueError(f"no conversation between two people in {', '.join(files)} "
                         f"(dropped: {summary['drops']}): nothing to answer with")
    replies = _replies(shards, marked_only=bool(reply_as)) if fresh else {"counts": {}, "chosen": set()}
    if reply_as and fresh and not replies["chosen"]:
        c = replies["counts"]
        raise ValueError(f"no usable reply by {', '.join(f'{k} ({v} messages)' for k, v in names.items())}: of "
                         f"their {c.get('turns', 0)} turns in kept conversations, {c.get('first_turns', 0)} open "
                         f"a conversation (sessions "
                         f"with one speaker are dropped: {summary['drops'].get('one_speaker', 0)}); add exports "
                         f"with more of their replies")
    index = out / INDEX
    tuning = None
    if not add:   # an --add indexes with the model the bot was built with
        model, tuning = _finetune(model, shards, out, finetune_minutes, progress)
        if (out / TUNED).is_dir() and model.resolve() != (out / TUNED).resolve():
            shutil.rmtree(out / TUNED)   # an earlier build's fine-tuned model: this build does not use it
    built = _index(model, shards, index, replies, reply_as, add) if fresh else {"added": 0, "left_out": {}}
    ranker = old["ranker"] if add else _fit_ranker(index, shards, model)

    read, dropped = read_report(summary, labels)
    build = {"kind": "add" if add else "build", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "shards": shards.name, "reply_as_names": len(reply_as), "read": read, "dropped": dropped,
             "replies": replies["counts"], "index": built, **({"already_in_bot": already} if add else {}),
             **({"skipped_files": len(skipped)} if skipped else {})}
    from retrieval.encoder import model_hash
    rep = {"model": str(model.resolve()), "model_sha256": model_hash(model),
           "reply_as": old["reply_as"] if add else ({"names": len(reply_as)} if reply_as else None),
           "shards": [*(old["shards"] if add else []), shards.name],
           "builds": [*(old["builds"] if add else []), build],
           "finetune": old.get("finetune") if add else tuning, "ranker": ranker, "serves": serves(index)}
    rep["speakers"] = (f"only the speaker(s) chosen by --reply-as ({rep['reply_as']['names']} name(s) when built)"
                       if rep["reply_as"] else "every speaker")
    stored = dict(rep, builds=[*rep["builds"][:-1], dict(build, read=for_file(read, labels))])
    atomic_write_text(out / BOT_FILE, json.dumps(stored, ensure_ascii=False, indent=1) + "\n")
    print_report(rep, build, names, out, out / TUNED)
    return stored


def _load_report(out: Path) -> dict:
    p = out / BOT_FILE
    if not p.is_file() or not (out / INDEX / INFO_FILE).is_file():
        raise FileNotFoundError(f"{out} holds no bot ({BOT_FILE} and {INDEX}/ missing): build it first with "
                                f"`dialogbert bot EXPORT... --out {out}`")
    return json.loads(p.read_text("utf-8"))


def build_bot(exports: Sequence[str], out: str | os.PathLike, model=None, reply_as: Sequence[str] = (),
              workers: int = 1, progress: bool = True, finetune_minutes: float = FINETUNE_MINUTES) -> dict:
    """Exports -> out/shards, (out/encoder), out/index (+ ranker.json), out/bot.json; returns
    bot.json's content."""
    return _build(exports, out, model, reply_as, False, workers, progress, finetune_minutes)


def add_to_bot(exports: Sequence[str], out: str | os.PathLike, model=None, reply_as: Sequence[str] = (),
               workers: int = 1, progress: bool = True) -> dict:
    """More exports -> out/shards-N, appended to out/index (conversations the bot has are left
    out; the ranker is kept as fitted); returns bot.json's content."""
    return _build(exports, out, model, reply_as, True, workers, progress)


def run_bot(exports: Sequence[str], out: str | os.PathLike, add: Sequence[str] | None = None, model=None,
            reply_as: Sequence[str] = (), serve: bool = True, host: str = "127.0.0.1", port: int = 8000,
            workers: int = 1, finetune_minutes: float = FINETUNE_MINUTES) -> int:
    if add and exports:
        raise ValueError("give the exports of a new bot (dialogbert bot EXPORT... --out DIR) or --add EXPORT... "
                         "to grow the bot in --out, not both")
    if add:
        add_to_bot(add, out, model, reply_as, workers)
    else:
        build_bot(exports, out, model, reply_as, workers, finetune_minutes=finetune_minutes)
    if not serve:
        return 0
    from bot.server import serve as serve_chat  # the same production server as `dialogbert serve`
    rep = json.loads((Path(out) / BOT_FILE).read_text("utf-8"))
    return serve_chat({"INDEX_DIR": str(Path(out) / INDEX), "MODEL_DIR": rep["model"]}, host=host, port=port)
