"""The production server (bot.server.serve, as `dialogbert serve` runs it) over a stub retriever, for
tests/test_server.py: `python tests/serve_stub.py [RATE_LIMIT]` prints the address it listens on
(a free port) and serves until SIGTERM."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.server import serve  # noqa: E402


class StubRetriever:
    def search(self, contexts, k):
        return [[(0.9, {"text": "좋아요, 내일 봐요!"}), (0.8, {"text": "Sounds good, see you tomorrow!"})][:k]
                for _ in contexts]


if __name__ == "__main__":
    rate = sys.argv[1] if len(sys.argv) > 1 else ""
    sys.exit(serve({"RETRIEVER": StubRetriever(), "RATE_LIMIT": rate, "MAX_CONTENT_LENGTH": 4096},
                   host="127.0.0.1", port=0, threads=2))
