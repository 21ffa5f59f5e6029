# make demo : install into .venv, then run the whole way on the bundled sample corpus
# make test : install into .venv, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed
RUN    ?= runs/demo
PORT   ?= 8000

.PHONY: install browser demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch goes first and alone, pinned: its CPU build lies on disk here; later installs then
# find the pin satisfied instead of resolving a CUDA build.
$(STAMP): $(PY) requirements.txt requirements-dev.txt pyproject.toml
	$(PIP) install -q "$$(grep '^torch==' requirements.txt)"
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dialogbert demo --out $(RUN) --port $(PORT)

# tests/test_browser.py's Chromium and Korean fonts, from Debian (never a browser download): installed
# quietly when missing, only as root where apt-get exists; when that fails, the test skips and says why.
browser: $(PY)
	@if ! dpkg -s chromium fonts-noto-cjk >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and fonts-noto-cjk with apt-get for tests/test_browser.py"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium fonts-noto-cjk) >$(VENV)/apt-browser.log 2>&1 \
	  || echo "apt-get could not install chromium (see $(VENV)/apt-browser.log): tests/test_browser.py will skip"; fi

test: $(STAMP) browser
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

bench: $(STAMP)
	$(PY) bench/preprocess.py
	$(PY) bench/pretrain.py
	$(PY) bench/retrieval.py
	@if [ -f $(RUN)/index/index_info.json ]; then $(PY) bench/serving.py --index $(RUN)/index --shards $(RUN)/shards; \
	else echo "bench/serving.py skipped: no index in $(RUN)/index (run make demo first)"; fi

clean:
	rm -rf runs .pytest_cache
