"""`dialogbert audit`: the test split and prompts asking for personal data, replayed through the
chat service's own reply logic, with a retriever whose candidates we control."""
from __future__ import annotations

import json

import pytest

from dialogbert.audit import PROMPTS, audit, why_flagged


class LeakyRetriever:
    """Personal data scores first; one clean reply in each language below it."""

    def __init__(self):
        self.asked = 0

    def search(self, contexts, k):
        self.asked += len(contexts)
        cands = [("제 번호는 010-1234-5678이에요", 0.99), ("Call me at 415-555-2671", 0.98),
                 ("[NAME]한테 물어봐", 0.97), ("I'm Ethan, nice to meet you", 0.96),
                 ("좋아요, 내일 봐요!", 0.5), ("Sounds good, see you!", 0.4)]
        return [[(s, {"text": t}) for t, s in cands][:k] for _ in contexts]


@pytest.fixture
def index_dir(tmp_path, tiny_shards):
    d = tmp_path / "index"
    d.mkdir()
    (d / "index_info.json").write_text(json.dumps(
        {"count": 990, "shards": [str(tiny_shards)], "dropped": {"pii": 4, "placeholder": 6, "duplicate": 50}}))
    return d


def test_the_service_answers_every_replayed_message_without_personal_data(index_dir, tiny_shards):
    r = LeakyRetriever()
    rep = audit(index_dir, retriever=r, max_messages=40, progress=False)
    assert rep["flagged"] == [] and rep["shards"] == str(tiny_shards)
    n = sum(len(p) for p in PROMPTS.values())
    assert rep["messages"] == 40 + 2 * n == sum(rep["replies"].values()) == r.asked
    # each corpus of the mixed folder gets its turn, and every prompt is sent alone and in one session
    assert {"test split (xpersona)", "test split (chatbotdata)"} <= set(rep["replies"])
    assert rep["replies"]["prompts (en), one session"] == len(PROMPTS["en"])
    ic = rep["index_candidates"]
    assert (ic["refused_pii"], ic["refused_placeholder"]) == (4, 6) and ic["refused_share"] == pytest.approx(0.01)


def test_a_reply_with_personal_data_is_flagged(index_dir, monkeypatch):
    import bot.app
    monkeypatch.setattr(bot.app, "choose_reply", lambda candidates, history, **kw: candidates[0][0])
    rep = audit(index_dir, retriever=LeakyRetriever(), max_messages=5, progress=False)
    assert len(rep["flagged"]) == rep["messages"]
    assert rep["flagged"][0]["why"] == ["detector [PHONE]"]
    assert why_flagged("[NAME]한테 물어봐") == ["placeholder [NAME]"] and why_flagged("좋아요, 내일 봐요!") == []


def test_the_command_fails_when_a_reply_is_flagged_and_names_what_is_missing(index_dir, tmp_path, monkeypatch, capsys):
    import bot.app
    import dialogbert.audit
    from dialogbert.cli import main
    real = dialogbert.audit.audit
    monkeypatch.setattr(dialogbert.audit, "audit", lambda *a, **kw: real(*a, retriever=LeakyRetriever(), progress=False, **kw))
    assert main(["audit", "--index", str(index_dir), "--max-messages", "5", "--report", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["flagged"] == []
    monkeypatch.setattr(bot.app, "choose_reply", lambda candidates, history, **kw: candidates[0][0])
    assert main(["audit", "--index", str(index_dir), "--max-messages", "5"]) == 1
    assert "replies flagged:" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no index_info.json"):
        audit(tmp_path / "nowhere", retriever=LeakyRetriever())
    (index_dir / "index_info.json").write_text(json.dumps({"count": 1, "shards": ["/gone/shards"]}))
    with pytest.raises(FileNotFoundError, match="pass --shards"):
        audit(index_dir, retriever=LeakyRetriever())
