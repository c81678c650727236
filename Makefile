# LoRA-WiSE entry points. `make demo` and `make test` work on a fresh machine: they create the
# virtual environment from the project's own files first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Reinstall when the dependency files change.
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install demo test browser bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# builder/ and leaderboard/ install as lora_wise.builder and lora_wise.leaderboard (package_dir), so
	# setuptools' editable install goes through its import finder and prints an informational notice
	# ("Editable installation ... folders ... may take precedence"); tests/test_architecture.py already
	# refuses the hazard it names, so the notice is filtered here.
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

## Build the miniature benchmark on the CPU, run both baselines under the paper's protocol,
## score them, fill the local leaderboard and write the report.
demo: install
	$(BIN)/lora-wise demo

## The test suite (the leaderboard's browser test needs Debian's chromium).
test: install browser
	$(BIN)/python -m pytest

browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "The browser test needs Debian's chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

## Speed measurements (each prints a RESULT line).
bench: install
	$(BIN)/python bench/features.py
	$(BIN)/python bench/baselines.py
	$(BIN)/python bench/build.py
	$(BIN)/python bench/builder_training.py
	$(BIN)/python bench/estimates.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
