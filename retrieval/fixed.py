"""Evaluation on FIXED candidate sets, as published response-selection benchmarks use them
(docs/protocol.md, "Fixed candidate sets").

    evaluate_fixed(candidates_file, report, model=, index_dir=, shards=) -> flat dict; writes report.json/.md

Unlike :mod:`retrieval.evaluate`, which draws the negatives itself, the file gives each context
its candidates and every system scores exactly those. Two formats, read streaming:

* **JSONL**, one object per line: ``{"context": [turns, oldest first], "candidates": [texts],
  "label": i}`` where ``label`` is the index of the true candidate (or a list of indices when
  several are right) and ``"id"`` is optional. Written by :mod:`retrieval.adversarial`.
* **Tab-separated** (Ubuntu Dialogue Corpus v1/v2, Douban, E-commerce):
  ``label<TAB>turn1<TAB>...<TAB>response``, one line per candidate, label 1 for a true reply.
  **Grouping rule**: consecutive lines whose context turns are equal (field for field) form one
  example; a new context starts a new example (and, with ``group_size``, so does every
  ``group_size``-th line, for files whose neighbouring examples share a context).

A broken line (bad JSON, a label out of range, too few fields) is reported as ``FILE:LINE:
why`` (a warning) and skipped; an empty file, or one without a single readable example, is a
ValueError naming the file. Turns carry no speakers in either format: they alternate two
speakers ("A", "B"), the newest turn "A" (the encoder's speaker ids are relative anyway).

**Metrics.** rank = 1 + the number of wrong candidates scoring >= the best-scoring right one:
ties count against the system (as in :mod:`retrieval.metrics`), and with several right
candidates (Douban) the best-ranked one counts, the common practice for R@k and MRR there.
Examples without a right candidate (Douban has some) are skipped and counted. For n candidates:
``Rn@1``, ``Rn@2``, ``Rn@5`` (those with k < n) and ``MRR``; with 2 candidates ``accuracy``
(= R2@1). A file mixing several n reports each n's Rn@k over its own examples, MRR over all.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

KS = (1, 2, 5, 10)
REPORTED_BROKEN = 20  # broken lines warned about one by one; the rest are counted


@dataclass
class FixedExample:
    context: list[tuple[str, str]]  # (speaker, text), oldest first
    candidates: list[str]
    positives: list[int]            # indices of the right candidates (empty: skipped in scoring)
    id: str = ""
    where: str = ""                 # "FILE:LINE" of the example's first line


@dataclass
class ReadStats:
    """What a reader met: lines read, broken lines (skipped), examples without a right candidate."""
    lines: int = 0
    broken: int = 0
    no_positive: int = 0
    examples: int = 0
    problems: list[str] = field(default_factory=list)  # the first REPORTED_BROKEN "FILE:LINE: why"

    def broken_line(self, where: str, why: str) -> None:
        self.broken += 1
        if len(self.problems) < REPORTED_BROKEN:
            self.problems.append(f"{where}: {why}")
            warnings.warn(f"{where}: {why}; line skipped", stacklevel=3)


def with_speakers(turns: Sequence[str]) -> list[tuple[str, str]]:
    """Turns without speakers as (speaker, text): two speakers alternating, the newest "A"."""
    n = len(turns)
    return [("A" if (n - 1 - i) % 2 == 0 else "B", t) for i, t in enumerate(turns)]


# ---- readers ---------------------------------------------------------------------------------

def sniff_format(path: Path) -> str:
    """"jsonl" when the first non-blank line starts with "{", else "tsv"."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                return "jsonl" if line.lstrip().startswith("{") else "tsv"
    return "tsv"


def _json_example(obj, where: str) -> FixedExample:
    """One JSONL object as an example; ValueError saying what is wrong with it."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    ctx, cands, label = obj.get("context"), obj.get("candidates"), obj.get("label")
    if not isinstance(ctx, list) or not ctx or not all(isinstance(t, str) for t in ctx):
        raise ValueError('"context" must be a non-empty list of strings')
    if not isinstance(cands, list) or len(cands) < 2 or not all(isinstance(c, str) for c in cands):
        raise ValueError('"candidates" must be a list of at least 2 strings')
    labels = label if isinstance(label, list) else [label]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(cands) for i in labels):
        raise ValueError(f'"label" must be an index (or a list of indices) in 0..{len(cands) - 1}, got {label!r}')
    return FixedExample(with_speakers(ctx), cands, sorted(set(labels)), str(obj.get("id", "")), where)


def read_jsonl(path: str | Path, stats: ReadStats | None = None) -> Iterator[FixedExample]:
    """Examples of a JSONL file, one per line, streamed; blank lines are ignored."""
    path, stats = Path(path), stats if stats is not None else ReadStats()
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            stats.lines += 1
            where = f"{path}:{n}"
            try:
                ex = _json_example(json.loads(line), where)
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                stats.broken_line(where, str(e))
                continue
            stats.examples += 1
            yield ex


def _tsv_line(line: str) -> tuple[int, list[str], str]:
    """(label, context turns, response) of one tab-separated line; ValueError when broken."""
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) < 3:
        raise ValueError(f"{len(fields)} tab-separated field(s); expected label<TAB>turn...<TAB>response")
    if fields[0].strip() not in ("0", "1"):
        raise ValueError(f"label {fields[0][:20]!r} is not 0 or 1")
    return int(fields[0]), fields[1:-1], fields[-1]


def read_tsv(path: str | Path, stats: ReadStats | None = None, group_size: int | None = None) -> Iterator[FixedExample]:
    """Examples of a tab-separated file (label<TAB>turns...<TAB>response, one line per
    candidate), streamed: consecutive lines with equal context turns are one example (see the
    module's grouping rule); ``group_size`` also closes a group after that many lines."""
    path, stats = Path(path), stats if stats is not None else ReadStats()
    group: list[tuple[int, str]] = []
    turns: list[str] | None = None
    start = 0

    def flush():
        ex = FixedExample(with_speakers(turns), [c for _, c in group], [i for i, (lab, _) in enumerate(group) if lab],
                          f"{path.name}:{start}", f"{path}:{start}")
        stats.examples += 1
        return ex

    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            stats.lines += 1
            try:
                label, ctx, response = _tsv_line(line)
            except ValueError as e:
                stats.broken_line(f"{path}:{n}", str(e))
                continue
            if group and (ctx != turns or (group_size and len(group) >= group_size)):
                yield flush()
                group = []
            if not group:
                turns, start = ctx, n
            group.append((label, response))
    if group:
        yield flush()


def read_candidates(path: str | Path, fmt: str | None = None, stats: ReadStats | None = None,
                    group_size: int | None = None) -> Iterator[FixedExample]:
    """Examples of a fixed-candidate file, JSONL or tab-separated (``fmt``, else sniffed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such candidates file")
    fmt = fmt or sniff_format(path)
    if fmt == "jsonl":
        return read_jsonl(path, stats)
    if fmt == "tsv":
        return read_tsv(path, stats, group_size)
    raise ValueError(f"unknown candidates format {fmt!r}: use 'jsonl' or 'tsv'")


def load_fixed(path: str | Path, fmt: str | None = None, max_examples: int | None = None,
               group_size: int | None = None) -> tuple[list[FixedExample], ReadStats]:
    """The scorable examples of a file (those with a right candidate; the first ``max_examples``)
    and what the reader met. An empty file, or one with no scorable example, is a ValueError."""
    stats = ReadStats()
    keep = []
    for ex in read_candidates(path, fmt, stats, group_size):
        if not ex.positives:
            stats.no_positive += 1
            continue
        keep.append(ex)
        if max_examples is not None and len(keep) >= max_examples:
            break
    if not keep:
        why = ("it is empty" if not stats.lines else
               f"{stats.broken} of its {stats.lines} lines are broken (first: {stats.problems[0]})" if stats.broken == stats.lines
               else f"none of its {stats.examples} examples has a right candidate (label)")
        raise ValueError(f"{path}: no example to evaluate: {why}. Expected JSONL "
                         '{"context": [...], "candidates": [...], "label": i} or label<TAB>turn...<TAB>response lines')
    if stats.broken:
        print(f"{path}: {stats.broken} broken line(s) skipped", flush=True)
    return keep, stats


# ---- metrics ---------------------------------------------------------------------------------

def fixed_rank(scores: Sequence[float], positives: Sequence[int]) -> int:
    """1 + the number of wrong candidates scoring >= the best right one (ties against the system)."""
    s = np.asarray(scores, dtype=np.float64)
    wrong = np.ones(len(s), dtype=bool)
    wrong[list(positives)] = False
    return 1 + int((s[wrong] >= s[list(positives)].max()).sum())


def fixed_metrics(ranks: Sequence[int], sizes: Sequence[int]) -> dict[str, float]:
    """Rn@k (k in KS below n) for each candidate count n, over that n's examples; "accuracy"
    (R2@1) for n = 2; MRR over all examples."""
    r, n_of = np.asarray(ranks), np.asarray(sizes)
    out: dict[str, float] = {}
    for n in sorted(set(n_of.tolist())):
        mine = r[n_of == n]
        if n == 2:
            out["accuracy"] = float(np.mean(mine == 1))
            continue
        for k in KS:
            if k < n:
                out[f"R{n}@{k}"] = float(np.mean(mine <= k))
    out["MRR"] = float(np.mean(1.0 / r)) if len(r) else 0.0
    return out


class FixedEvaluator:
    """Holds the examples; calling it with a scorer (``score(contexts, candidates) -> (m, n)``)
    returns the metrics of :func:`fixed_metrics` plus ``seconds``. Examples are scored in groups
    of equal candidate count, since scorers take rectangular candidate lists."""

    def __init__(self, examples: Sequence[FixedExample]):
        self.examples = list(examples)
        self.sizes = [len(e.candidates) for e in self.examples]

    def ranks(self, scorer) -> list[int]:
        out = [0] * len(self.examples)
        for n in sorted(set(self.sizes)):
            rows = [i for i, s in enumerate(self.sizes) if s == n]
            got = np.asarray(scorer.score([self.examples[i].context for i in rows],
                                          [self.examples[i].candidates for i in rows]))
            if got.shape != (len(rows), n):
                raise ValueError(f"{getattr(scorer, 'name', scorer)}: scores of shape {got.shape}, "
                                 f"expected {(len(rows), n)}")
            for i, s in zip(rows, got):
                out[i] = fixed_rank(s, self.examples[i].positives)
        return out

    def __call__(self, scorer) -> dict[str, float]:
        t0 = time.perf_counter()
        out = fixed_metrics(self.ranks(scorer), self.sizes)
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return out


# ---- the systems and the report ------------------------------------------------------------

def baseline_texts(examples: Sequence[FixedExample], shards: str | Path | None) -> tuple[list[str], str]:
    """The texts the lexical baselines are fitted on, and where they come from: the training
    responses of ``shards`` (the protocol's choice) or, without shards, the file's own distinct
    candidates (idf from the test candidates themselves; no labels are used)."""
    if shards is not None:
        from retrieval.examples import train_responses
        texts = train_responses(shards)
        if texts:
            return texts, f"training responses of {shards}"
    return sorted({c for e in examples for c in e.candidates}), "the file's own candidates"


def _encoder(model, index_dir, precision: str = "auto"):
    """(MemoEncoder or None, model name): the encoder of ``model``, else the one the index names,
    its weights at ``precision`` (Encoder.for_inference)."""
    from retrieval.evaluate import MemoEncoder
    if model is None and index_dir is None:
        return None, None
    from retrieval.encoder import Encoder
    if model is None:
        from retrieval.index import INFO_FILE
        info = Path(index_dir) / INFO_FILE
        if not info.is_file():
            raise FileNotFoundError(f"{info} is missing: pass an index folder built by `dialogbert index`")
        info_model = json.loads(info.read_text("utf-8")).get("model")
        if not info_model or not Path(info_model).is_dir():
            raise FileNotFoundError(f"{index_dir}: the index names no encoder folder that exists "
                                    f"({info_model!r}); pass --model ENCODER_DIR")
        model = info_model
    return MemoEncoder(Encoder.load(model).for_inference(precision)), str(model)


def evaluate_fixed(candidates: str | Path, report: str | Path | None, model: str | Path | None = None,
                   index_dir: str | Path | None = None, shards: str | Path | None = None, *,
                   encoder=None, fmt: str | None = None, max_examples: int | None = None,
                   group_size: int | None = None, reranker: str | Path | None = None, peer: bool = False,
                   batch_size: int = 64, precision: str = "auto") -> dict:
    """Score every system on the file's own candidates: random, BM25 and TF-IDF (fitted as
    :func:`baseline_texts` says), the peer (``peer``), the dialog encoder alone (row
    ``encoder``) and, with ``index_dir`` and a fitted ranker, the served ranker (and its own
    encoders alone). ``served`` names the row the bot serves. Writes the report folder unless
    ``report`` is None; returns the report dict. ``precision``: the weights of an encoder loaded
    here (Encoder.for_inference), as the chat service serves them."""
    from retrieval.baselines import BM25Scorer, TfidfScorer
    from retrieval.evaluate import PEER_NAME, EncoderScorer, MemoEncoder, RandomScorer, bare_row, ranker_scorers
    examples, stats = load_fixed(candidates, fmt, max_examples, group_size)
    ev = FixedEvaluator(examples)
    systems: dict[str, dict] = {"random": ev(RandomScorer())}
    texts, fitted_on = baseline_texts(examples, shards)
    for sc in (BM25Scorer().fit(texts), BM25Scorer(bigrams=False).fit(texts), TfidfScorer().fit(texts)):
        systems[sc.name] = ev(sc)
    if peer:
        from dialogbert.peers import peer_model_path
        from retrieval.encoder import Encoder
        systems[PEER_NAME] = ev(EncoderScorer(Encoder.load(peer_model_path(), context_turns=3), PEER_NAME, batch_size))
    model_name, served, ranker = None, None, None
    if encoder is not None:
        encoder, model_name = MemoEncoder(encoder), str(model or "encoder")
    else:
        encoder, model_name = _encoder(model, index_dir, precision)
    if encoder is not None:
        systems["encoder"] = ev(EncoderScorer(encoder, "encoder", batch_size))
        systems.update((k, ev(sc)) for k, sc in bare_row(encoder, "encoder", batch_size).items())
        served = "encoder"
        if index_dir is not None:
            from retrieval.index import ResponseIndex
            from retrieval.ranker import Ranker
            idx = ResponseIndex.load(index_dir, encoder=encoder)
            ranker = Ranker.load(index_dir, idx.info)
            ranked, own = ranker_scorers(idx, ranker, "encoder", reranker)
            for sc in own:
                systems[sc.name] = ev(sc)
            if ranked is not None:
                systems[ranked.name] = ev(ranked)
                served = ranked.name
    rep = {"corpus": Path(candidates).name, "candidates_file": str(candidates), "model": model_name,
           "index": str(index_dir) if index_dir else None, "served": served,
           "precision": getattr(encoder, "weights_precision", None) if encoder is not None else None,
           "baselines_fitted_on": fitted_on,
           "sizes": {"examples": len(examples), "candidates": sorted(set(ev.sizes)),
                     "lines": stats.lines, "broken_lines": stats.broken,
                     "skipped_no_positive": stats.no_positive, "max_examples": max_examples,
                     "multiple_positives": sum(len(e.positives) > 1 for e in examples),
                     "baseline_texts": len(texts)},
           "rank_rule": "1 + wrong candidates scoring >= the best-scoring right one (ties against the system)",
           "seeds": {"random_scorer": 0},
           "problems": stats.problems,
           "systems": systems}
    if ranker is not None and served != "encoder":
        from dataclasses import asdict
        rep["ranker"] = asdict(ranker)
    if report is not None:
        write_fixed_report(rep, report)
    return rep


def write_fixed_report(report: dict, out: str | Path) -> Path:
    """report.json and report.md (the table of every system on the file's candidates)."""
    from retrieval.evaluate import write_tables
    s = report["sizes"]
    keys = ["accuracy"] + [f"R{n}@{k}" for n in s["candidates"] if n > 2 for k in KS if k < n] + ["MRR"]
    return write_tables(report, out, [
        f"# Fixed candidate sets: {report['corpus']}", "",
        f"{s['examples']} examples with {', '.join(map(str, s['candidates']))} candidates each "
        f"(given by the file; {s['skipped_no_positive']} without a right candidate skipped, "
        f"{s['broken_lines']} broken lines skipped, {s['multiple_positives']} with several right ones: "
        f"the best-ranked counts); ties count against the system.",
        f"Baselines fitted on {report['baselines_fitted_on']} ({s['baseline_texts']} texts)."], keys)
