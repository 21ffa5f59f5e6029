"""Fixed candidate sets (retrieval.fixed) and the adversarial sets (retrieval.adversarial): the
readers on tiny files with known answers, the metrics on stub scorers, the rewrites on tables of
real-looking lines, and the command line end to end on a tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.adversarial import english_negation, english_tense, korean_negation, korean_tense
from retrieval.fixed import FixedEvaluator, evaluate_fixed, fixed_metrics, fixed_rank, load_fixed, read_tsv


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def jsonl(*objs):
    return [json.dumps(o, ensure_ascii=False) for o in objs]


# ---- readers -----------------------------------------------------------------------------------

def test_jsonl_reader_keeps_good_lines_and_names_the_broken_one(tmp_path):
    f = write(tmp_path / "set.jsonl", jsonl(
        {"context": ["안녕", "뭐 해?"], "candidates": ["밥 먹어", "안녕"], "label": 0, "id": "a"},
        {"context": ["hi"], "candidates": ["x", "y", "z"], "label": [1, 2]}) +
        ["{not json", "", json.dumps({"context": ["q"], "candidates": ["a", "b"], "label": 5})])
    with pytest.warns(UserWarning) as got:
        examples, stats = load_fixed(f)
    messages = [str(w.message) for w in got]
    assert any(f"{f}:3:" in m for m in messages) and any(f"{f}:5:" in m and '"label"' in m for m in messages)
    assert stats.broken == 2 and stats.lines == 4 and len(examples) == 2
    a, b = examples
    assert a.id == "a" and a.context == [("B", "안녕"), ("A", "뭐 해?")] and a.positives == [0]
    assert a.where == f"{f}:1" and b.positives == [1, 2]


def test_ubuntu_tsv_groups_consecutive_lines_with_the_same_context(tmp_path):
    f = write(tmp_path / "test.txt", [
        "1\thow do i mount a usb drive\tuse the mount command",
        "0\thow do i mount a usb drive\ttry rebooting",
        "0\thow do i mount a usb drive\tapt-get install vlc",
        "0\tany ideas?\tnope\tsudo apt-get update",         # another context: a new example, no positive
        "0\tany ideas?\tnope\tls -la",
        "garbage line without tabs",                      # broken: reported, skipped
        "1\tdouban a\tdouban b\t好的",                     # several positives (Douban)
        "0\tdouban a\tdouban b\t不行",
        "1\tdouban a\tdouban b\t可以"])
    with pytest.warns(UserWarning, match=rf"test.txt:6: 1 tab-separated field"):
        examples, stats = load_fixed(f)
    assert stats.no_positive == 1 and stats.broken == 1 and stats.examples == 3
    first, douban = examples
    assert first.candidates == ["use the mount command", "try rebooting", "apt-get install vlc"]
    assert first.positives == [0] and first.context == [("A", "how do i mount a usb drive")]
    assert douban.context == [("B", "douban a"), ("A", "douban b")] and douban.positives == [0, 2]
    # group_size splits neighbouring examples that share a context
    same = write(tmp_path / "same.txt", ["1\tq\ta", "0\tq\tb", "1\tq\tc", "0\tq\td"])
    assert [e.candidates for e in read_tsv(same, group_size=2)] == [["a", "b"], ["c", "d"]]


def test_empty_or_wholly_broken_files_are_errors_naming_the_file(tmp_path):
    empty = write(tmp_path / "empty.jsonl", [""])
    with pytest.raises(ValueError, match="empty.jsonl: no example to evaluate: it is empty"):
        load_fixed(empty)
    broken = write(tmp_path / "broken.tsv", ["x\ty\tz", "2\ta\tb"])
    with pytest.raises(ValueError, match=r"broken.tsv: no example.*2 of its 2 lines are broken"), pytest.warns(UserWarning):
        load_fixed(broken)
    nolabel = write(tmp_path / "nolabel.tsv", ["0\ta\tb", "0\ta\tc"])
    with pytest.raises(ValueError, match="has a right candidate"):
        load_fixed(nolabel)
    with pytest.raises(FileNotFoundError, match="no such candidates file"):
        load_fixed(tmp_path / "missing.jsonl")


# ---- metrics -----------------------------------------------------------------------------------

def test_rank_counts_ties_against_the_system_and_takes_the_best_positive():
    assert fixed_rank([1.0, 1.0, 0.0], [0]) == 2          # a tie with a wrong one: rank 2
    assert fixed_rank([0.0] * 10, [3]) == 10              # all equal: rank n
    assert fixed_rank([0.1, 0.9, 0.5, 0.3], [0, 2]) == 2  # best positive 0.5: one wrong above it
    assert fixed_rank([0.5, 0.5], [0, 1]) == 1            # two positives tied: no wrong one above
    m = fixed_metrics([1, 2, 10, 1], [10, 10, 10, 2])
    assert m["R10@1"] == pytest.approx(1 / 3) and m["R10@2"] == pytest.approx(2 / 3) and m["R10@5"] == pytest.approx(2 / 3)
    assert m["accuracy"] == 1.0 and "R10@10" not in m and "R2@1" not in m
    assert m["MRR"] == pytest.approx((1 + 0.5 + 0.1 + 1) / 4)


class KeyScorer:
    """Scores 1 for the candidate equal to the context's key in ``answers``, 0 otherwise."""
    name = "key"

    def __init__(self, answers):
        self.answers = answers

    def score(self, contexts, candidates):
        return np.array([[float(c == self.answers.get(ctx[-1][1])) for c in cands]
                         for ctx, cands in zip(contexts, candidates)])


def test_evaluator_on_stub_scorers_with_mixed_candidate_counts(tmp_path):
    rows = [{"context": [f"q{i}"], "candidates": [f"n{i}.{j}" for j in range(9)] + [f"a{i}"], "label": 9}
            for i in range(4)]
    rows += [{"context": [f"p{i}"], "candidates": [f"b{i}", f"w{i}"], "label": 0} for i in range(2)]
    examples, _ = load_fixed(write(tmp_path / "mix.jsonl", jsonl(*rows)))
    ev = FixedEvaluator(examples)
    right = ev(KeyScorer({**{f"q{i}": f"a{i}" for i in range(4)}, **{f"p{i}": f"b{i}" for i in range(2)}}))
    assert right["R10@1"] == right["accuracy"] == right["MRR"] == 1.0
    # half of the 10-candidate examples get all zeros (rank 10); the 2-candidate ones prefer the wrong one
    half = ev(KeyScorer({"q0": "a0", "q1": "a1", "p0": "w0", "p1": "w1"}))
    assert half["R10@1"] == 0.5 and half["R10@5"] == 0.5 and half["accuracy"] == 0.0
    assert half["MRR"] == pytest.approx((1 + 1 + 0.1 + 0.1 + 0.5 + 0.5) / 6)


# ---- adversarial rewrites ----------------------------------------------------------------------

KOREAN_NEGATION = [("좋아요", "안 좋아요"), ("안 좋아요 ㅠㅠ", "좋아요 ㅠㅠ"), ("밥 먹었어", "밥 안 먹었어"),
                   ("못 가요", "가요"), ("좋지 않아요", "좋아요"), ("가지 않았어", "갔어"),
                   ("공부했어요", "공부 안 했어요"), ("저도 좋아해요!", "저도 안 좋아해요!"), ("미안해", "안 미안해"),
                   ("할 거야", "안 할 거야"), ("재미있어요", "재미없어요"), ("시간 없어", "시간 있어"),
                   ("여기 앉아있어", "여기 안 앉아있어"), ("인형을 갖고 싶어!", None),
                   ("안녕하세요", None), ("진짜?", None), ("오빠", None), ("좋은 생각이에요", None), ("감사합니다", None)]
KOREAN_TENSE = [("했어", "해"), ("그거 했어?", "그거 해?"), ("먹었어요", "먹어요"), ("좋아요", "좋았어요"),
                ("사랑해", "사랑했어"), ("고마워요", "고마웠어요"), ("내일 봐요!", "내일 봤어요!"),
                ("할 거야", "했어"), ("먹을 거예요", "먹었어요"), ("갈 거야?", "갔어?"), ("감사합니다", "감사했습니다"),
                ("있어", "있었어"), ("같이 놀 거야", None), ("진짜?", None), ("영어", None), ("노래", None),
                ("안녕하세요", None), ("그럼요 ㅎㅎ", None)]
ENGLISH_NEGATION = [("I don't like it", "I do like it"), ("I am happy", "I am not happy"),
                    ("I like pizza", "I don't like pizza"), ("She went home", "She didn't go home"),
                    ("I'm tired", "I'm not tired"), ("Do you play?", "Don't you play?"), ("I can't wait", "I can wait"),
                    ("He likes cats", "He doesn't like cats"), ("It is not bad", "It is bad"),
                    ("Sounds great!", None), ("Cool", None)]
ENGLISH_TENSE = [("I am happy", "I was happy"), ("I'm tired", "I was tired"), ("Did you go?", "Do you go?"),
                 ("I like pizza", "I liked pizza"), ("She went home", "She goes home"), ("I was there", "I am there"),
                 ("They are nice", "They were nice"), ("I have a dog", "I had a dog"), ("Sounds great!", None)]


@pytest.mark.parametrize("rewrite, table", [(korean_negation, KOREAN_NEGATION), (korean_tense, KOREAN_TENSE),
                                            (english_negation, ENGLISH_NEGATION), (english_tense, ENGLISH_TENSE)])
def test_rewrites_apply_where_they_should_and_nowhere_else(rewrite, table):
    got = [(line, rewrite(line)) for line, _ in table]
    assert got == table


def test_adversarial_sets_from_the_test_split_are_deterministic(tiny_shards, tmp_path):
    from dialogbert.cli import main
    from retrieval.examples import load_examples

    assert main(["adversarial", "--shards", str(tiny_shards), "--out", str(tmp_path / "a"), "--max", "30"]) == 0
    assert main(["adversarial", "--shards", str(tiny_shards), "--out", str(tmp_path / "b"), "--max", "30"]) == 0
    test_replies = {e.response for e in load_examples(tiny_shards, "test")}
    for kind in ("copy", "negation", "tense"):
        a = (tmp_path / "a" / f"{kind}.jsonl").read_text("utf-8")
        assert a == (tmp_path / "b" / f"{kind}.jsonl").read_text("utf-8")
        cases = [json.loads(line) for line in a.splitlines()]
        assert 5 <= len(cases) <= 30, kind
        for c in cases:
            true, wrong = c["candidates"][c["label"]], c["candidates"][1 - c["label"]]
            assert true in test_replies and wrong != true and c["kind"] == kind
            if kind == "copy":
                assert wrong == c["context"][-1]
        assert {c["label"] for c in cases} == {0, 1}  # the true reply's position is drawn
    summary = json.loads((tmp_path / "a" / "adversarial.json").read_text())
    assert summary["written"]["negation"] <= summary["applied"]["negation"] <= summary["test_examples"]


# ---- end to end ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """A quarter of tiny_shards' conversations: the index below builds in a few seconds."""
    from conftest import sample_conversations
    from preprocess.schema import write_shard

    out = tmp_path_factory.mktemp("small-shards")
    write_shard(out / "shard-00000.jsonl", sample_conversations(n_persona=50, n_qa=100))
    return out


@pytest.fixture(scope="module")
def tiny_encoder(small_shards, tmp_path_factory):
    """A random 1-layer DialogBERT saved as an encoder folder (no training: the scores only have
    to exist), and an index of it with a hand-written ranker (dual + lexical + neighbour)."""
    from conftest import save_random_dialogbert
    from retrieval.index import build_index
    from retrieval.ranker import Ranker

    out = save_random_dialogbert(tmp_path_factory.mktemp("fixed-encoder"), hidden=32, layers=1, pretraining=False)
    idx = build_index(out, small_shards, tmp_path_factory.mktemp("fixed-index") / "index")
    info = json.loads((idx / "index_info.json").read_text())
    Ranker(weights={"dual": 1.0, "lexical": 1.0, "neighbour": 0.5},
           fitted_on={"model_sha256": info["model_sha256"], "note": "by hand, for the test"}).save(idx)
    return out, idx


def test_eval_candidates_scores_every_system_and_names_the_served_row(tiny_encoder, small_shards, tmp_path):
    from dialogbert.cli import main

    model, idx = tiny_encoder
    assert main(["adversarial", "--shards", str(small_shards), "--out", str(tmp_path / "adv"), "--max", "40"]) == 0
    report = tmp_path / "report"
    assert main(["eval", "--candidates", str(tmp_path / "adv" / "copy.jsonl"), "--model", str(model),
                 "--index", str(idx), "--shards", str(small_shards), "--report", str(report)]) == 0
    rep = json.loads((report / "report.json").read_text())
    served = "encoder + ranker (dual, lexical, neighbour)"
    assert rep["served"] == served and rep["baselines_fitted_on"].startswith("training responses")
    assert set(rep["systems"]) == {"random", "BM25 words + char bigrams", "BM25 words", "TF-IDF char 1-3",
                                   "encoder", served}
    for m in rep["systems"].values():  # two candidates: rank 1 (accuracy) or 2, so MRR = acc + (1 - acc) / 2
        assert m["MRR"] == pytest.approx(0.5 + m["accuracy"] / 2)
    # the copy of the last turn shares every word with the context: the lexical baselines fall for it
    assert rep["systems"]["TF-IDF char 1-3"]["accuracy"] < 0.3
    md = (report / "report.md").read_text()
    assert f"Served (what the bot answers with): {served}" in md and f"| {served} (served) |" in md
    # no index, no shards: the encoder alone is served; the baselines fit on the file's candidates
    rep = evaluate_fixed(tmp_path / "adv" / "tense.jsonl", None, model=model)
    assert rep["served"] == "encoder" and rep["baselines_fitted_on"] == "the file's own candidates"
    # the command needs one of --shards and --candidates
    assert main(["eval", "--model", str(model), "--report", str(tmp_path / "r2")]) == 2


def test_protocol_report_names_its_served_row(tiny_encoder, small_shards, tmp_path):
    from retrieval.evaluate import evaluate

    model, idx = tiny_encoder
    rep = evaluate(model, small_shards, tmp_path / "r", index_dir=idx, n=10)
    row = "encoder + ranker (dual, lexical, neighbour)"
    assert rep["served"] == row and "encoder" in rep["systems"] and row in rep["systems"]  # the model's own row
    assert json.loads((tmp_path / "r" / "report.json").read_text())["served"] == row
    assert f"| {row} (served) |" in (tmp_path / "r" / "report.md").read_text()
    plain = evaluate(model, small_shards, None, n=10)
    assert plain["served"] == "encoder"  # no index: the encoder's own row
    assert evaluate(None, small_shards, None, n=10, baselines_only=True)["served"] is None
