"""The production server (bot.server.serve, as `dialogbert serve` runs it) over a stub retriever, for
tests/test_server.py and tests/test_browser.py: `python tests/serve_stub.py [RATE_LIMIT]` prints the
address it listens on (a free port) and serves until SIGTERM; `start(RATE_LIMIT)` runs it so and
returns (base url, process).

The stub offers a Korean and an English reply (the service picks the one in the language of the
user's message); a message holding "<" is echoed first ("you sent: ...", markup for the page to show
as text), and one holding "slow" is answered after SLOW_SECONDS (the page's waiting state)."""
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.server import serve  # noqa: E402

SLOW_SECONDS = 2.0


class StubRetriever:
    def search(self, contexts, k):
        out = []
        for context in contexts:
            newest = context[-1][1] if context else ""
            if "slow" in newest.lower():
                time.sleep(SLOW_SECONDS)
            hits = [(0.9, {"text": "좋아요, 내일 봐요!"}), (0.8, {"text": "Sounds good, see you tomorrow!"})]
            if "<" in newest:
                hits.insert(0, (0.95, {"text": f"you sent: {newest}"}))
            out.append(hits[:k])
        return out


def start(rate: str = "") -> tuple[str, subprocess.Popen]:
    """Start this script in a new process; (its base url, the process) once its socket listens."""
    log = tempfile.TemporaryFile("w+")   # its access log, never read unless it fails to start
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), rate], stdout=subprocess.PIPE,
                            stderr=log, text=True)
    found = re.search(r"http://127\.0\.0\.1:(\d+)/", proc.stdout.readline())   # printed once it listens
    if not found:
        proc.kill()
        proc.wait(timeout=10)
        log.seek(0)
        raise RuntimeError(f"the stub server did not start: {log.read()[-2000:]}")
    return f"http://127.0.0.1:{found.group(1)}", proc


if __name__ == "__main__":
    rate = sys.argv[1] if len(sys.argv) > 1 else ""
    sys.exit(serve({"RETRIEVER": StubRetriever(), "RATE_LIMIT": rate, "MAX_CONTENT_LENGTH": 4096},
                   host="127.0.0.1", port=0, threads=2))
