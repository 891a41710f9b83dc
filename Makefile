# Two commands do all the set-up: `make demo` and `make test`.
# Each creates .venv on first use and reinstalls only when the project files change; both also install what the
# web page and the `browser` runtime need: onnxruntime-web from exporters/web_assets/package-lock.json (npm) and,
# as root, Debian's Chromium when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WEB_ASSETS := exporters/web_assets
ORT_WEB := $(WEB_ASSETS)/node_modules/.package-lock.json
CHROMIUM_INSTALL := apt-get install -y chromium

.PHONY: demo test install chromium clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,browser,edge]'
	touch $(STAMP)

# The pinned onnxruntime-web that `rtool export --format web` copies into every page.
$(ORT_WEB): $(WEB_ASSETS)/package.json $(WEB_ASSETS)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(WEB_ASSETS) --ignore-scripts --no-audit --no-fund --loglevel=error && touch $@; \
	else \
		echo "note: npm is missing, so --format web is skipped; install Node.js 18+ and run make again"; \
	fi

# Debian's Chromium for the `browser` runtime, installed when missing and we are root.
chromium:
	@if [ -n "$$RTOOL_CHROMIUM" ] || command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		$(CHROMIUM_INSTALL) || (apt-get update && $(CHROMIUM_INSTALL)); \
	else \
		echo "note: Chromium is missing, so the browser runtime is unavailable; run as root: $(CHROMIUM_INSTALL)"; \
	fi

install: $(STAMP) $(ORT_WEB) chromium

demo: install
	$(BIN)/rtool demo

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

clean:
	rm -rf $(VENV) runs .pytest_cache $(WEB_ASSETS)/node_modules
