"""The chat service through Flask's test client, with a retriever whose answers we control."""
from __future__ import annotations

import pytest

from bot.app import create_app, choose_reply, is_servable


class FakeRetriever:
    """Returns fixed candidates and records the contexts it was asked about."""

    def __init__(self, candidates):
        self.candidates, self.contexts = candidates, []

    def search(self, contexts, k):
        self.contexts.extend(contexts)
        return [list(self.candidates)[:k] for _ in contexts]


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
    assert page.status_code == 200 and b"api/chat" in page.data
    assert client.get("/healthz").get_json()["status"] == "ok"


def test_create_app_needs_an_index():
    with pytest.raises(ValueError, match="INDEX_DIR"):
        create_app({})


def test_choose_reply_and_guard():
    assert not is_servable("연락처 공일공 일이삼사 오육칠팔")
    assert is_servable("3시 30분에 만나요")
    assert choose_reply([("a@b.co 로 보내", 1.0)], []) is None
