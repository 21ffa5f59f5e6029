"""Korean morphemes and their pretrained neighbours as n-gram encoder features (retrieval.morphemes):
conjugations share their stem, a synonym the corpus never used shares features with the word it
replaces, non-Korean text gets none, and an encoder folder remembers whether it used them."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from retrieval.morphemes import Morphemes, MorphemesUnavailable
from retrieval.ngram import NgramEncoder, NgramSettings


def test_conjugations_share_their_stem_and_content_morphemes_bring_their_neighbours():
    broke_up, broke_up_person, parting = Morphemes().features(["헤어졌어", "헤어진 사람", "이별했어"])
    assert broke_up[0] == "m:헤어지/VV" and "m:헤어지/VV" in broke_up_person
    assert "m:었/EP" in broke_up  # endings are features too (tense, mood)
    # the CoNg embeddings' nearest morphemes of 헤어지 (to break up) include 이별 (parting)
    assert "m:이별/NNG" in broke_up
    assert {"m:이별/NNG", "m:헤어지/VV"} <= set(parting)
    # neighbours come only from content morphemes: an ending brings none
    alone = Morphemes(expand=0).features(["헤어졌어"])[0]
    assert alone == ["m:헤어지/VV", "m:었/EP", "m:어/EF"]
    assert Morphemes(min_similarity=1.01).features(["헤어졌어"]) == [alone]


def test_an_unknown_word_is_a_feature_without_neighbours():
    """A made-up name is out of the analyser's vocabulary: its placeholder id stands for every such
    word, so it brings no neighbours (they would be the same junk for all of them)."""
    made_up, known = Morphemes().features(["퓨럴깁이 왔어", "헤어졌어"])
    assert made_up[0].startswith("m:퓨럴깁/") and made_up[1] == "m:이/JKS"  # no neighbours between
    assert all(f.split("/")[0] != "m:" for f in made_up + known)  # no empty forms


def test_text_without_korean_morphemes_gets_no_features():
    assert Morphemes().features(["hello there, 123 :)", "", "ㅋㅋㅋ ㅠㅠ", "https://example.com"]) == [[], [], [], []]
    with pytest.raises(ValueError, match="expand must be >= 0"):
        Morphemes(expand=-1)


def test_a_synonym_shares_features_before_any_training():
    """The table untrained (random rows): 헤어졌어 and 이별했어 share no stem, yet their expanded
    morphemes overlap, so they are nearer with morphemes than without; an unrelated text is not."""
    def cosines(morphemes: bool) -> tuple[float, float]:
        enc = NgramEncoder(NgramSettings(buckets=1 << 14, dim=64, morphemes=morphemes))
        enc.set_rows(np.arange(enc.settings.buckets))
        a, b, c = enc.encode(["헤어졌어", "이별했어", "밥 먹었어"])
        return float(a @ b), float(a @ c)
    with_m, without = cosines(True), cosines(False)
    assert with_m[0] > without[0] + 0.1
    assert with_m[0] > with_m[1] + 0.1


def test_the_folder_remembers_the_analyser_and_old_folders_load_without_morphemes(tmp_path, monkeypatch):
    import kiwipiepy
    enc = NgramEncoder(NgramSettings(buckets=1 << 12, dim=16, heads=1, epochs=1, batch_size=4))
    pairs = [("헤어졌어", "잊힐 거예요"), ("배고파", "밥 드세요"), ("졸려", "푹 쉬어"), ("비 와", "우산 챙겨")] * 2
    enc.fit(pairs, show_progress=False)
    enc.save(tmp_path)
    settings_file = tmp_path / "ngram" / "settings.json"
    saved = json.loads(settings_file.read_text())
    assert saved["morphemes"] is True and saved["analyser"] == kiwipiepy.__version__
    back = NgramEncoder.load(tmp_path)
    texts = ["헤어졌어", "결별했어요", "hello"]
    assert np.array_equal(back.encode(texts), enc.encode(texts))

    # another analyser version: its morphemes may differ, so the folder is refused with the fix
    settings_file.write_text(json.dumps({**saved, "analyser": "0.0.1"}))
    with pytest.raises(ValueError, match="kiwipiepy 0.0.1.*kiwipiepy==0.0.1.*dialogbert index"):
        NgramEncoder.load(tmp_path)
    # a folder saved before morphemes existed has no such keys: n-grams alone, as it was trained
    old = {k: v for k, v in saved.items() if k not in ("morphemes", "expand", "min_similarity", "analyser")}
    settings_file.write_text(json.dumps(old))
    assert NgramEncoder.load(tmp_path).morphemes is None

    # without the analyser installed, a folder that needs it names the install
    settings_file.write_text(json.dumps(saved))
    monkeypatch.setitem(sys.modules, "kiwipiepy", None)
    with pytest.raises(MorphemesUnavailable, match="kiwipiepy is not installed.*requirements.txt.*--no-morphemes"):
        NgramEncoder.load(tmp_path)


def test_the_command_line_reports_a_missing_analyser_with_its_fix(tmp_path, monkeypatch, capsys, recorded):
    """`dialogbert serve`/`eval` on an index whose n-gram encoder used morphemes, without kiwipiepy:
    an error naming the index, the install and --no-morphemes, not a traceback."""
    from dialogbert.cli import main
    from retrieval.ranker import own_encoders
    enc = NgramEncoder(NgramSettings(buckets=1 << 12, dim=16, heads=1, epochs=1, batch_size=2))
    enc.fit([("헤어졌어", "잊힐 거예요"), ("배고파", "밥 드세요")], show_progress=False)
    enc.save(tmp_path)
    monkeypatch.setitem(sys.modules, "kiwipiepy", None)
    with pytest.raises(MorphemesUnavailable, match=f"{tmp_path}.*kiwipiepy is not installed.*--no-morphemes"):
        own_encoders(tmp_path, ["잊힐 거예요"], use=False)
    import retrieval.ranker  # `recorded`: nothing is built; the fit below reads the n-gram encoder

    def fit(*a, **k):
        own_encoders(tmp_path, [], use=False)
    monkeypatch.setattr(retrieval.ranker, "fit_for_index", fit)
    assert main(["index", "--model", "m", "--shards", "s", "--out", str(tmp_path)]) == 2
    assert "--no-morphemes" in capsys.readouterr().err
