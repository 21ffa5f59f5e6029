"""The chat service through Flask's test client, with a retriever whose answers we control."""
from __future__ import annotations

import json
import re

import pytest

from bot.app import create_app, choose_reply, is_servable
from bot.batching import default_workers
from preprocess.pipeline import detect_lang


class FakeRetriever:
    """Returns fixed candidates and records the contexts it was asked about."""

    def __init__(self, candidates):
        self.candidates, self.contexts = candidates, []

    def search(self, contexts, k):
        self.contexts.extend(contexts)
        return [[(score, {"text": text}) for text, score in self.candidates][:k] for _ in contexts]


@pytest.fixture
def leaky():
    # Scores put personal data first: the service must never pick it.
    return FakeRetriever([
        ("제 번호는 010-1234-5678이에요", 0.99),
        ("메일 주세요 minjun.kim@example.com", 0.98),
        ("[NAME]한테 물어봐", 0.97),
        ("국민은행 계좌 123456-01-234567로 보내줘", 0.96),
        ("좋아요, 내일 봐요!", 0.90),
        ("그럼 다음에 봐요", 0.80),
    ])


def test_reply_skips_personal_data_and_placeholders(leaky):
    client = create_app({"RETRIEVER": leaky}).test_client()
    r = client.post("/api/chat", json={"message": "내일 만날까?"})
    assert r.status_code == 200
    body = r.get_json()
    assert body["reply"] == "좋아요, 내일 봐요!"
    shown = [c["text"] for c in body["candidates"]]
    assert shown == ["좋아요, 내일 봐요!", "그럼 다음에 봐요"]
    assert "010" not in r.get_data(as_text=True) and "example.com" not in r.get_data(as_text=True)


def test_session_context_is_kept_anonymized_and_replies_not_repeated(leaky):
    client = create_app({"RETRIEVER": leaky, "CONTEXT_TURNS": 3}).test_client()
    first = client.post("/api/chat", json={"message": "내 번호 010-9876-5432야"}).get_json()
    sid = first["session_id"]
    second = client.post("/api/chat", json={"message": "기억해?", "session_id": sid}).get_json()
    assert second["session_id"] == sid
    assert second["reply"] == "그럼 다음에 봐요"  # the best one was already said in this session
    last_context = leaky.contexts[-1]
    assert [s for s, _ in last_context] == ["U", "B", "U"]  # CONTEXT_TURNS=3, oldest first
    assert all("9876" not in t for _, t in last_context)   # the user's number never reached the encoder
    assert "[PHONE]" in leaky.contexts[0][0][1]


def test_sessions_are_separate_and_reset(leaky):
    client = create_app({"RETRIEVER": leaky}).test_client()
    a = client.post("/api/chat", json={"message": "안녕", "session_id": "session-a1"}).get_json()
    b = client.post("/api/chat", json={"message": "hello", "session_id": "session-b1"}).get_json()
    assert a["reply"] == b["reply"] == "좋아요, 내일 봐요!"
    assert client.post("/api/reset", json={"session_id": "session-a1"}).status_code == 200
    again = client.post("/api/chat", json={"message": "안녕", "session_id": "session-a1"}).get_json()
    assert again["reply"] == "좋아요, 내일 봐요!"
    assert len(leaky.contexts[-1]) == 1


def test_fallback_when_nothing_is_servable():
    client = create_app({"RETRIEVER": FakeRetriever([("전화 010-1111-2222", 1.0)])}).test_client()
    assert "모르겠" in client.post("/api/chat", json={"message": "뭐해?"}).get_json()["reply"]
    assert "not sure" in client.post("/api/chat", json={"message": "what's up?"}).get_json()["reply"]


@pytest.mark.parametrize("body,status", [
    (None, 400), ({"msg": "x"}, 400), ({"message": "   "}, 400), ({"message": 5}, 400),
    ({"message": "가" * 1001}, 413),
])
def test_bad_requests_say_what_is_wrong(leaky, body, status):
    client = create_app({"RETRIEVER": leaky}).test_client()
    r = client.post("/api/chat", json=body) if body is not None else client.post("/api/chat", data="nope")
    assert r.status_code == status
    assert r.get_json()["error"]


def test_page_and_health(leaky):
    client = create_app({"RETRIEVER": leaky}).test_client()
    page = client.get("/")
    assert page.status_code == 200 and b'src="static/chat.js"' in page.data and b"<script>" not in page.data
    script = client.get("/static/chat.js")
    assert script.status_code == 200 and b"api/chat" in script.data
    assert client.get("/static/chat.css").status_code == 200
    health = client.get("/healthz")
    assert health.status_code == 200 and health.get_json() == {"status": "ok"}   # no session count
    assert leaky.contexts[-1] == [("U", "안녕하세요")]                            # it asked the retriever


def test_create_app_needs_an_index():
    with pytest.raises(ValueError, match="INDEX_DIR"):
        create_app({})


def test_choose_reply_and_guard():
    assert not is_servable("연락처 공일공 일이삼사 오육칠팔")
    assert is_servable("3시 30분에 만나요")
    assert choose_reply([("a@b.co 로 보내", 1.0)], []) is None


def test_serves_from_a_real_index_and_never_returns_planted_personal_data(tmp_path):
    """shards with planted personal data -> tokenizer -> tiny random DialogBERT -> index -> chat."""
    import torch

    from conftest import sample_conversations
    from dialogbert.modeling import DialogBertConfig, DialogBertModel
    from dialogbert.tokenizer import train_tokenizer
    from preprocess.schema import Conversation, Turn, write_shard
    from retrieval.index import build_index

    leaks = ["내 번호 010-2345-6789로 연락해", "계좌 신한 110-234-567890 으로 보내", "메일은 jiwoo.park@example.org 야"]
    convs = sample_conversations(n_persona=20, n_qa=150)
    for i, leak in enumerate(leaks * 10):  # many copies, so a random model would surely meet them
        convs.append(Conversation(f"planted{i}", "jsonl", "ko", [Turn("S1", "연락처 알려줘"), Turn("S2", leak)]))
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / "shard-00000.jsonl", convs)

    model_dir = tmp_path / "model"
    tok = train_tokenizer(shards, model_dir, vocab_size=1000)
    torch.manual_seed(0)
    cfg = DialogBertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    DialogBertModel(cfg).save_pretrained(model_dir)
    index_dir = build_index(model_dir, shards, tmp_path / "index")
    stored = [json.loads(line)["text"] for line in (index_dir / "responses.jsonl").read_text("utf-8").splitlines()]
    assert stored and not any("example.org" in t or "2345" in t or "110-234" in t for t in stored)

    client = create_app({"INDEX_DIR": str(index_dir)}).test_client()  # the model named by the index
    assert client.get("/healthz").get_json() == {"status": "ok"}
    info = client.get("/api/info").get_json()
    index_info = json.loads((index_dir / "index_info.json").read_text("utf-8"))
    from retrieval.encoder import resolve_precision
    assert info["model"] == {"name": "model", "sha256": index_info["model_sha256"],
                             "precision": resolve_precision("auto")}  # served as the hardware computes best
    assert info["index"]["size"] == index_info["count"] == len(stored)
    assert info["ranker"]["features"] and str(tmp_path) not in json.dumps(info)   # names, never paths
    sid = None
    for message in ["연락처 알려줘", "번호 좀 줘", "오늘 뭐 했어?", "메일 주소 뭐야?"]:
        body = client.post("/api/chat", json={"message": message, "session_id": sid}).get_json()
        sid = body["session_id"]
        assert body["reply"] in stored
        for leak in leaks:
            assert leak not in json.dumps(body, ensure_ascii=False)

    # the service searches overlapping requests in one call (bot/batching.py): the same answers
    from retrieval.ranker import HybridRetriever
    # in fp32: with bf16 weights three contexts packed in one row round otherwise than one alone
    # (scores within ~1e-3), enough to swap this random model's near-equal candidates
    hybrid = HybridRetriever.load(index_dir, precision="fp32")
    contexts = [[("U", m)] for m in ["연락처 알려줘", "오늘 뭐 했어? 나는 집에서 쉬었어", "배고파"]]
    together = hybrid.search(contexts, 5)
    for ctx, hits in zip(contexts, together):
        (alone,) = hybrid.search([ctx], 5)
        assert [row["text"] for _, row in hits] == [row["text"] for _, row in alone]
        assert [s for s, _ in hits] == pytest.approx([s for s, _ in alone], abs=1e-5)


# --------------------------------------------------------------------------------------------
# sessions: bounded on every path, expiring when idle, safe under threads

class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_session_bound_holds_for_many_clients(leaky):
    app = create_app({"RETRIEVER": leaky, "MAX_SESSIONS": 50, "RATE_LIMIT": ""})  # one test address
    client = app.test_client()
    sids = [f"client-{i:05d}" for i in range(400)]
    for sid in sids:
        assert client.post("/api/chat", json={"message": "안녕", "session_id": sid}).status_code == 200
    sessions = app.config["SESSIONS"]
    assert len(sessions) == 50
    assert sessions.history(sids[0]) == []                 # the least recently used went first
    assert [s for s, _ in sessions.history(sids[-1])] == ["U", "B"]
    # reading or resetting sessions that do not exist creates none
    for sid in sids[:200]:
        client.post("/api/reset", json={"session_id": sid})
        sessions.history(sid + "x")
    assert len(sessions) == 50


def test_reading_a_session_keeps_it_from_eviction(leaky):
    app = create_app({"RETRIEVER": leaky, "MAX_SESSIONS": 3})
    sessions = app.config["SESSIONS"]
    for sid in ("a", "b", "c"):
        sessions.append(sid, "U", sid)
    sessions.history("a")          # "a" is now the most recently used
    sessions.append("d", "U", "d")
    assert sessions.history("b") == [] and sessions.history("a") == [("U", "a")]


def test_idle_session_expires(leaky):
    clock = FakeClock()
    app = create_app({"RETRIEVER": leaky, "SESSION_IDLE_SECONDS": 600, "SESSION_CLOCK": clock})
    client = app.test_client()
    sessions = app.config["SESSIONS"]
    client.post("/api/chat", json={"message": "안녕", "session_id": "idle-session"})
    clock.now += 599
    client.post("/api/chat", json={"message": "뭐해?", "session_id": "idle-session"})
    assert len(leaky.contexts[-1]) == 3                  # still there: each use restarts the wait
    clock.now += 599
    client.post("/api/chat", json={"message": "hello", "session_id": "other-session"})
    assert len(sessions) == 2
    clock.now += 2
    assert len(sessions) == 1                            # "idle-session" unused for 601 s
    assert sessions.history("idle-session") == []
    client.post("/api/chat", json={"message": "다시 왔어", "session_id": "idle-session"})
    assert len(leaky.contexts[-1]) == 1                  # starts afresh


def test_sessions_reject_a_nonsense_config(leaky):
    with pytest.raises(ValueError, match="SESSION_IDLE_SECONDS"):
        create_app({"RETRIEVER": leaky, "SESSION_IDLE_SECONDS": 0})


def test_concurrent_appends_keep_the_bound():
    import sys
    import threading

    from bot.sessions import Sessions

    sessions = Sessions(max_sessions=64, max_turns=4)
    errors = []

    def worker(k):
        try:
            for i in range(1500):
                sid = f"t{k}-{i % 700}"
                sessions.append(sid, "U", str(i))
                sessions.history(f"t{(k + 1) % 8}-{i % 700}")
                if i % 50 == 0:
                    sessions.reset(f"t{k}-{i - 1}")
        except Exception as e:  # pragma: no cover - the failure being tested for
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)   # switch threads as often as possible
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors
    assert len(sessions) == 64
    assert all(len(entry[1]) <= 4 for entry in sessions._data.values())


# --------------------------------------------------------------------------------------------
# bad input: refused with a JSON error before anything is kept; the session goes on normally

class TokenizingRetriever(FakeRetriever):
    """Encodes every context turn as UTF-8 first, as a real tokenizer must (a lone surrogate fails)."""

    def search(self, contexts, k):
        for context in contexts:
            for _, text in context:
                text.encode("utf-8")
        return super().search(contexts, k)


def _post_raw(client, path, data: str):
    return client.post(path, data=data.encode("utf-8", "surrogatepass"), content_type="application/json")


@pytest.mark.parametrize("raw", [
    '{"message": "hi \\ud800", "session_id": "poisoned-1"}',          # lone high surrogate, JSON escape
    '{"message": "hi \\udfff there", "session_id": "poisoned-1"}',    # lone low surrogate
    '{"message": "hi \\u0000", "session_id": "poisoned-1"}',          # NUL
    '{"message": "bell \\u0007 and \\u001b[31m", "session_id": "poisoned-1"}',
    '{"message": "C1 \\u0085\\u009b", "session_id": "poisoned-1"}',
])
def test_text_that_is_not_text_is_refused_and_the_session_goes_on(raw):
    retriever = TokenizingRetriever([("좋아요, 내일 봐요!", 0.9), ("그럼 다음에 봐요", 0.8)])
    app = create_app({"RETRIEVER": retriever})
    client = app.test_client()
    assert client.post("/api/chat", json={"message": "안녕", "session_id": "poisoned-1"}).status_code == 200
    r = _post_raw(client, "/api/chat", raw)
    assert r.status_code == 400
    assert "not text" in r.get_json()["error"]
    assert [s for s, _ in app.config["SESSIONS"].history("poisoned-1")] == ["U", "B"]   # nothing kept
    for message in ("뭐해?", "hello again"):
        ok = client.post("/api/chat", json={"message": message, "session_id": "poisoned-1"})
        assert ok.status_code == 200 and ok.get_json()["session_id"] == "poisoned-1"
    assert [t for s, t in retriever.contexts[-1] if s == "U"] == ["안녕", "뭐해?", "hello again"][-3:]


def test_tabs_and_newlines_are_text(leaky):
    client = create_app({"RETRIEVER": leaky}).test_client()
    r = client.post("/api/chat", json={"message": "첫 줄\n둘째\t줄\r\n"})
    assert r.status_code == 200
    assert leaky.contexts[-1][-1][1] == "첫 줄 둘째 줄"


def test_a_failed_search_leaves_the_session_as_it_was(leaky):
    class Flaky(FakeRetriever):
        fail = False

        def search(self, contexts, k):
            if self.fail:
                raise RuntimeError("index went away")
            return super().search(contexts, k)

    retriever = Flaky(leaky.candidates)
    app = create_app({"RETRIEVER": retriever})
    client = app.test_client()
    client.post("/api/chat", json={"message": "안녕", "session_id": "flaky-session"})
    retriever.fail = True
    r = client.post("/api/chat", json={"message": "내 비밀 얘기", "session_id": "flaky-session"})
    assert r.status_code == 500 and r.is_json
    assert "index went away" not in r.get_json()["error"]    # no internals to the client
    retriever.fail = False
    assert client.post("/api/chat", json={"message": "다시", "session_id": "flaky-session"}).status_code == 200
    assert [t for s, t in retriever.contexts[-1] if s == "U"] == ["안녕", "다시"]


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("path", ["/api/chat", "/api/reset"])
@pytest.mark.parametrize("raw", [DEEP, '{"message": ' + DEEP + "}", "[1, 2]", '"hello"', "5", "null", "{",
                                 '{"message": "hi"'])
def test_bodies_that_are_not_json_objects_get_a_json_4xx(leaky, path, raw):
    client = create_app({"RETRIEVER": leaky}).test_client()
    r = _post_raw(client, path, raw)
    assert 400 <= r.status_code < 500 and r.is_json and r.get_json()["error"]


@pytest.mark.parametrize("path", ["/api/chat", "/api/reset"])
def test_too_deep_json_under_the_size_limit_is_a_400(leaky, path):
    # 30,000 levels fit in 64 KiB, so this reaches the parser (RecursionError), not the size limit
    deep = "[" * 30_000 + "]" * 30_000
    client = create_app({"RETRIEVER": leaky}).test_client()
    for raw in (deep, '{"message": "hi", "session_id": ' + deep + "}"):
        r = _post_raw(client, path, raw)
        assert r.status_code == 400 and r.is_json and r.get_json()["error"]
    assert client.post("/api/chat", json={"message": "hi"}).status_code == 200


@pytest.mark.parametrize("method,path,status", [
    ("get", "/api/chat", 405), ("get", "/api/reset", 405), ("post", "/api/nothing", 404),
    ("get", "/api/", 404),
])
def test_every_api_error_is_json(leaky, method, path, status):
    client = create_app({"RETRIEVER": leaky}).test_client()
    r = getattr(client, method)(path)
    assert r.status_code == status and r.is_json and r.get_json()["error"]


def test_a_body_over_the_size_limit_is_a_json_413(leaky):
    client = create_app({"RETRIEVER": leaky, "MAX_CONTENT_LENGTH": 1024}).test_client()
    r = client.post("/api/chat", json={"message": "x" * 900, "padding": "y" * 2000})
    assert r.status_code == 413 and r.is_json and r.get_json()["error"]


def test_errors_outside_the_api_stay_pages(leaky):
    r = create_app({"RETRIEVER": leaky}).test_client().get("/nothing-here")
    assert r.status_code == 404 and not r.is_json


# --------------------------------------------------------------------------------------------
# English personal data: kept out of the session, never served

@pytest.fixture
def leaky_en():
    return FakeRetriever([
        ("Hi, I'm Ethan!", 0.99),
        ("my name's brian!", 0.985),
        ("call me at (415) 555-2671", 0.98),
        ("my SSN is 123-45-6789 lol", 0.97),
        ("wire it to DE89 3704 0044 0532 0130 00", 0.96),
        ("I live at 221B Baker Street", 0.95),
        ("+44 20 7946 0958 is my uk number", 0.94),
        ("Sounds good, see you tomorrow!", 0.90),
        ("Sure, why not?", 0.80),
    ])


def test_english_personal_data_is_never_served(leaky_en):
    client = create_app({"RETRIEVER": leaky_en}).test_client()
    first = client.post("/api/chat", json={"message": "what's your name?"})
    body = first.get_json()
    assert body["reply"] == "Sounds good, see you tomorrow!"
    assert [c["text"] for c in body["candidates"]] == ["Sounds good, see you tomorrow!", "Sure, why not?"]
    second = client.post("/api/chat", json={"message": "and your number?", "session_id": body["session_id"]})
    assert second.get_json()["reply"] == "Sure, why not?"      # the next clean one, not a leaking one
    for r in (first, second):
        text = r.get_data(as_text=True)
        for leak in ("Ethan", "brian", "415", "6789", "DE89", "Baker", "7946"):
            assert leak not in text


def test_english_personal_data_the_user_sends_is_not_kept(leaky_en):
    app = create_app({"RETRIEVER": leaky_en})
    client = app.test_client()
    message = "Hi, I'm Ethan, text me at +1 415 555 2671 or 555-867-5309, I live at 12 Main St."
    sid = client.post("/api/chat", json={"message": message}).get_json()["session_id"]
    expected = "Hi, I'm [NAME], text me at [PHONE] or [PHONE], I live at [ADDRESS]."
    assert leaky_en.contexts[-1][-1] == ("U", expected)                  # what the encoder saw
    assert app.config["SESSIONS"].history(sid)[0] == ("U", expected)     # what is kept
    client.post("/api/chat", json={"message": "my SSN is 123-45-6789, IBAN GB82 WEST 1234 5698 7654 32",
                                   "session_id": sid})
    kept = " ".join(t for _, t in app.config["SESSIONS"].history(sid))
    for leak in ("Ethan", "415", "867", "Main", "6789", "GB82", "WEST"):
        assert leak not in kept
    assert "[RRN]" in kept and "[ACCOUNT]" in kept


def test_english_guard():
    for text in ("I'm Ethan", "thanks, Sarah", "(415) 555-2671", "SSN 123-45-6789", "12 Main St.",
                 "DE89 3704 0044 0532 0130 00"):
        assert not is_servable(text), text
    for text in ("I'm fine, thanks!", "Hi there", "see you at 7:30", "I'm Korean", "room 101"):
        assert is_servable(text), text


@pytest.mark.parametrize("message,candidates,expected", [
    ("내 번호 010-1234-5678 저장해 줘", [("네, 저장했어요!", 0.99), ("기억할게요", 0.95), ("알겠어요", 0.9)], "알겠어요"),
    ("save my number 555-867-5309", [("Saved it!", 0.99), ("Noted.", 0.97), ("I'll remember that", 0.96),
                                      ("Sounds good", 0.9)], "Sounds good"),
    ("I'm Ethan, remember me?", [("I'll remember that", 0.99), ("Nice to meet you!", 0.9)], "Nice to meet you!"),
])
def test_the_bot_never_claims_to_keep_personal_data(message, candidates, expected):
    client = create_app({"RETRIEVER": FakeRetriever(candidates)}).test_client()
    assert client.post("/api/chat", json={"message": message}).get_json()["reply"] == expected


def test_a_claim_to_remember_is_fine_without_personal_data():
    client = create_app({"RETRIEVER": FakeRetriever([("기억할게요", 0.99), ("알겠어요", 0.9)])}).test_client()
    assert client.post("/api/chat", json={"message": "내일 3시에 보자"}).get_json()["reply"] == "기억할게요"


# --------------------------------------------------------------------------------------------
# the reply follows the language of the user's newest message

@pytest.fixture
def mixed():
    # Korean and English candidates interleaved; scores alone would always answer in Korean
    return FakeRetriever([
        ("좋아요, 내일 봐요!", 0.99),
        ("Sounds good, see you tomorrow!", 0.95),
        ("그럼 다음에 봐요", 0.90),
        ("Sure, why not?", 0.85),
        ("ㅋㅋㅋ 그래", 0.80),
    ])


def test_the_reply_follows_the_language_of_each_message(mixed):
    client = create_app({"RETRIEVER": mixed}).test_client()
    sid = None
    replies = []
    for message in ("오늘 진짜 힘들었어", "I had a terrible day at work", "내일 만날까?", "ok, see you",
                    "ㅋㅋ", "what about friday?"):
        body = client.post("/api/chat", json={"message": message, "session_id": sid}).get_json()
        sid = body["session_id"]
        replies.append(body["reply"])
    # one session that began in Korean; each reply in the newest message's language, not yet said
    assert replies == ["좋아요, 내일 봐요!", "Sounds good, see you tomorrow!", "그럼 다음에 봐요", "Sure, why not?",
                       "ㅋㅋㅋ 그래", "Sounds good, see you tomorrow!"]   # all English ones said: the best again


def test_the_best_overall_when_no_candidate_is_in_the_language(mixed):
    only_ko = FakeRetriever([(t, s) for t, s in mixed.candidates if detect_lang([t]) == "ko"])
    client = create_app({"RETRIEVER": only_ko}).test_client()
    assert client.post("/api/chat", json={"message": "How was your day?"}).get_json()["reply"] == "좋아요, 내일 봐요!"
    # a message in neither language (or digits only) takes the best candidate, whatever its language
    client = create_app({"RETRIEVER": mixed}).test_client()
    for message in ("12345", "今日はどうだった?"):
        assert client.post("/api/chat", json={"message": message}).get_json()["reply"] == "좋아요, 내일 봐요!"


def test_the_language_choice_keeps_the_personal_data_guard():
    retriever = FakeRetriever([("Hi, I'm Ethan!", 0.99), ("저는 민준이에요", 0.9), ("Nice to meet you!", 0.8)])
    client = create_app({"RETRIEVER": retriever}).test_client()
    assert client.post("/api/chat", json={"message": "who are you?"}).get_json()["reply"] == "Nice to meet you!"
    assert choose_reply([("좋아요", 0.9), ("Sure", 0.8)], [], lang="en") == "Sure"
    assert choose_reply([("좋아요", 0.9), ("Sure", 0.8)], [], lang="other") == "좋아요"


# --------------------------------------------------------------------------------------------
# what every response carries, the rate limit, the access log

@pytest.mark.parametrize("method,path", [("get", "/"), ("get", "/static/chat.js"), ("get", "/healthz"),
                                         ("post", "/api/chat"), ("get", "/api/chat"), ("get", "/nothing")])
def test_security_headers_on_every_response(leaky, method, path):
    from bot.app import SECURITY_HEADERS

    r = getattr(create_app({"RETRIEVER": leaky}).test_client(), method)(path, json={"message": "안녕"})
    for name, value in SECURITY_HEADERS.items():
        assert r.headers[name] == value
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


def test_rate_limit_per_address_on_chat_only(leaky):
    client = create_app({"RETRIEVER": leaky, "RATE_LIMIT": "3/minute"}).test_client()
    for _ in range(3):
        assert client.post("/api/chat", json={"message": "안녕"}).status_code == 200
    r = client.post("/api/chat", json={"message": "안녕"})
    assert r.status_code == 429 and r.is_json
    assert "3 per 1 minute" in r.get_json()["error"] and int(r.headers["Retry-After"]) > 0
    assert "Content-Security-Policy" in r.headers
    # another address has its own count; other routes are not limited
    other = client.post("/api/chat", json={"message": "안녕"}, environ_base={"REMOTE_ADDR": "10.0.0.7"})
    assert other.status_code == 200
    for path in ("/healthz", "/"):
        assert client.get(path).status_code == 200
    assert client.post("/api/reset", json={"session_id": "whatever-1"}).status_code == 200


def test_behind_a_proxy_the_rate_limit_counts_the_forwarded_client(leaky):
    proxy = {"REMOTE_ADDR": "10.9.9.9"}   # every request arrives from the reverse proxy

    def post(client, forwarded):
        return client.post("/api/chat", json={"message": "안녕"}, environ_base=proxy,
                           headers={"X-Forwarded-For": forwarded}).status_code

    trusting = create_app({"RETRIEVER": leaky, "RATE_LIMIT": "2/minute", "PROXIES": 1}).test_client()
    assert [post(trusting, "203.0.113.5") for _ in range(3)] == [200, 200, 429]
    assert post(trusting, "203.0.113.6") == 200                 # another client behind the same proxy
    # a client cannot dodge the limit by sending its own X-Forwarded-For: the proxy appends the real one
    assert post(trusting, "1.2.3.4, 203.0.113.5") == 429
    # without PROXIES the header is ignored and every client counts as the proxy
    plain = create_app({"RETRIEVER": leaky, "RATE_LIMIT": "2/minute"}).test_client()
    assert [post(plain, f"203.0.113.{i}") for i in range(3)] == [200, 200, 429]


def test_no_rate_limit_when_empty(leaky):
    client = create_app({"RETRIEVER": leaky, "RATE_LIMIT": ""}).test_client()
    assert all(client.post("/api/chat", json={"message": "안녕"}).status_code == 200 for _ in range(40))


def test_a_default_rate_limit_and_a_bad_one(leaky):
    client = create_app({"RETRIEVER": leaky}).test_client()
    codes = [client.post("/api/chat", json={"message": "안녕"}).status_code for _ in range(31)]
    assert codes == [200] * 30 + [429]    # 30/minute unless configured
    with pytest.raises(ValueError, match="RATE_LIMIT 'thirty' is not a rate"):
        create_app({"RETRIEVER": leaky, "RATE_LIMIT": "thirty"})


def test_access_log_has_no_message_text(leaky, caplog):
    client = create_app({"RETRIEVER": leaky, "RATE_LIMIT": "1/minute"}).test_client()
    secret = "비밀이야 my-secret-words"
    with caplog.at_level("INFO", logger="dialogbert.access"):
        sid = client.post("/api/chat?q=query-text", json={"message": secret, "session_id": "logged-session-1"})
        client.post("/api/chat", json={"message": secret, "session_id": "logged-session-1"})   # 429
        client.post("/api/chat", data=secret.encode(), content_type="application/json",         # 400
                    environ_base={"REMOTE_ADDR": "10.0.0.8"})
    lines = [r.getMessage() for r in caplog.records if r.name == "dialogbert.access"]
    assert len(lines) == 3 and sid.status_code == 200
    assert [line.split()[:3] for line in lines] == [["POST", "/api/chat", str(code)] for code in (200, 429, 400)]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for text in ("비밀", "secret", "query-text", "logged-session", "127.0.0.1", "10.0.0.8"):
        assert text not in logged


# --------------------------------------------------------------------------------------------
# operators: health that really asks the retriever, what is served, the API document

class Broken(FakeRetriever):
    def search(self, contexts, k):
        raise RuntimeError("/secret/path/index is gone")


@pytest.mark.parametrize("retriever,reason", [(Broken([]), "RuntimeError"), (FakeRetriever([]), "no reply")])
def test_healthz_fails_when_the_retriever_does(retriever, reason):
    client = create_app({"RETRIEVER": retriever}).test_client()
    r = client.get("/healthz")
    assert r.status_code == 503 and r.is_json
    body = r.get_json()
    assert body["status"] == "failing" and reason in body["reason"] and "/secret" not in body["reason"]


def test_info_names_the_model_and_index_without_personal_data(leaky, tmp_path):
    import hashlib

    index_dir = tmp_path / "users" / "김민준" / "index"
    index_dir.mkdir(parents=True)
    meta = {"model": str(tmp_path / "users" / "김민준" / "encoder"), "model_sha256": "ab" * 32, "dimension": 384,
            "factory": "Flat", "count": 1234, "memory": 2000, "shards": [str(tmp_path / "minjun-kakao")],
            "dropped": {"pii": 3}, "updated": "2026-12-05T17:00:00Z"}
    (index_dir / "index_info.json").write_text(json.dumps(meta), "utf-8")

    class Ranked(FakeRetriever):
        class ranker:
            active = ["dual", "ngram", "lexical"]

    app = create_app({"RETRIEVER": Ranked(leaky.candidates), "INDEX_DIR": str(index_dir)})
    client = app.test_client()
    client.post("/api/chat", json={"message": "내 이름은 김민준이야"})
    info = client.get("/api/info").get_json()
    assert info == {
        "version": info["version"],
        "model": {"name": "encoder", "sha256": "ab" * 32, "precision": None},
        "index": {"size": 1234, "memory": 2000, "dimension": 384, "factory": "Flat",
                  "updated": "2026-12-05T17:00:00Z",
                  "info_sha256": hashlib.sha256((index_dir / "index_info.json").read_bytes()).hexdigest()},
        "ranker": {"features": ["dual", "ngram", "lexical"]},
        "batching": {"max_batch": 8, "workers": default_workers(), "batches": 1, "largest": 1},   # counts, nothing from the chats
    }
    assert re.fullmatch(r"\d+\.\d+\.\d+.*|unknown", info["version"])
    text = client.get("/api/info").get_data(as_text=True)
    for leak in ("김민준", "minjun", "users", "session"):
        assert leak not in text
    # a stub with no index: the fields are there, empty
    bare = create_app({"RETRIEVER": leaky}).test_client().get("/api/info").get_json()
    assert bare["index"]["size"] is None and bare["ranker"]["features"] == []


def test_the_openapi_document_is_the_api(leaky):
    app = create_app({"RETRIEVER": leaky})
    doc = app.test_client().get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.") and doc["info"]["version"]
    registered = {(rule.rule, method.lower()) for rule in app.url_map.iter_rules() if rule.endpoint != "static"
                  for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    api = {(path, m) for path, m in registered if path.startswith("/api/")}
    assert api == {(path, m) for path, m in documented if path.startswith("/api/")}    # both ways
    assert registered == documented                                                    # the rest too
    # every $ref resolves, and the errors the tests above see are described
    refs = set(re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"])
    assert {"400", "413", "429", "500"} <= set(doc["paths"]["/api/chat"]["post"]["responses"])


def test_a_changed_index_is_swapped_in_live_and_a_broken_one_never_answers(tmp_path):
    import os
    import threading
    (tmp_path / "index_info.json").write_text('{"count": 1}')
    clock = [0.0]
    gate, loads = threading.Event(), []

    def load():
        loads.append(len(loads))
        if len(loads) == 2:
            gate.wait(10)                  # the second load is slow: requests meanwhile get the old index
        if len(loads) == 3:
            raise RuntimeError("a half-written index")
        return FakeRetriever([(f"index {len(loads)} 입니다", 0.9)])

    app = create_app({"INDEX_DIR": str(tmp_path), "RETRIEVER_LOADER": load, "RATE_LIMIT": "",
                      "RELOAD_SECONDS": 5.0, "SESSION_CLOCK": lambda: clock[0]})
    watcher = app.extensions["dialogbert.watcher"]
    client = app.test_client()

    def reply():
        return client.post("/api/chat", json={"message": "안녕"}).get_json()["reply"]

    def touch(name, text):
        (tmp_path / name).write_text(text)
        os.utime(tmp_path / name, ns=(int(clock[0] * 1e9) + 10**9, int(clock[0] * 1e9) + 10**9))

    assert reply() == "index 1 입니다" and loads == [0]
    touch("index_info.json", '{"count": 2}')       # `dialogbert bot --add` finished writing
    clock[0] = 6.0
    assert reply() == "index 1 입니다"              # seen changed once: wait for it to hold still
    clock[0] = 12.0
    assert reply() == "index 1 입니다"              # loading starts now, in the background
    assert client.get("/api/info").get_json()["reload"]["loading"] is True
    assert reply() == "index 1 입니다"              # the old index answers while the new one loads
    gate.set()
    watcher.wait(10)
    assert reply() == "index 2 입니다"
    assert client.get("/api/info").get_json()["reload"]["reloads"] == 1

    touch("ranker.json", "{}")                     # a change that fails to load
    clock[0] = 18.0
    reply()
    clock[0] = 24.0
    reply()
    watcher.wait(10)
    assert reply() == "index 2 입니다" and len(loads) == 3
    assert client.get("/healthz").status_code == 200
    status = client.get("/api/info").get_json()["reload"]
    assert status["last_error"].startswith("RuntimeError") and "half-written" not in status["last_error"]
    clock[0] = 40.0                                # not retried until the folder changes again
    reply()
    assert len(loads) == 3
    off = create_app({"INDEX_DIR": str(tmp_path), "RETRIEVER_LOADER": load, "RELOAD_SECONDS": 0})
    assert "dialogbert.watcher" not in off.extensions
