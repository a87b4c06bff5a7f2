# omniway: `make demo` runs the whole pipeline on the bundled demo corpora,
# `make test` runs the test suite, `make bench` the benchmarks. Each creates
# .venv and installs into it first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch; a GPU user installs a CUDA torch first and runs
# `make demo TORCH_SPEC=` (see README).
TORCH_SPEC ?= torch==2.13.0
# Debian packages holding the real demo corpora.
DEMO_DEBS := tuxpaint-stamps-default asterisk-core-sounds-en-wav asterisk-core-sounds-en python3.11-doc
# Debian's headless browser and its WebDriver, for the evaluate report's test (selenium drives them).
BROWSER_DEBS := chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# $(call apt_install,PACKAGES,WHAT): install the Debian PACKAGES unless dpkg has them all; the
# package lists are refreshed only when the install fails (a fresh CI machine has none yet).
apt_install = dpkg -s $(1) >/dev/null 2>&1 || { \
  echo "installing $(2): $(1)"; \
  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1) >/dev/null 2>&1 || { \
    $(SUDO) apt-get update -q >/dev/null && \
    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1) >/dev/null; }; }

.PHONY: demo test bench venv demo-data browser clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(if $(TORCH_SPEC),$(PIP) install -q "$(TORCH_SPEC)")
	$(PIP) install -q -e '.[test]'
	# BEiT-3 reference model for the checkpoint parity tests and the model
	# benchmark; --no-deps because its timm pin would pull torchvision.
	$(PIP) install -q --no-deps torchscale==0.3.0 fairscale==0.4.0
	touch $@

venv: $(VENV)/.installed

demo-data:
	@$(call apt_install,$(DEMO_DEBS),demo corpora)

browser:
	@$(call apt_install,$(BROWSER_DEBS),the test browser)

demo: venv demo-data
	$(VENV)/bin/omniway run pipelines/configs/demo.yaml

test: venv demo-data browser
	$(PY) -m pytest

bench: venv demo-data
	# transformers is a benchmark-only dependency (bench_generate.py's GPT-2 baseline).
	$(PIP) install -q -e '.[bench]'
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf .omniway build *.egg-info
