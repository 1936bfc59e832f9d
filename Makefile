# Two entry points (see README): `make book` builds the whole book on the ci profile, `make test` runs the tests.
# Each creates the environment and the ci assets it needs on a fresh machine; both are safe to re-run.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= ci
HASH := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(HASH)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
export HF_HUB_OFFLINE := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: env system browser assets release-assets book slides test test-fast clean
env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[book,test]" -c constraints.txt
	rm -f $(VENV)/.installed-* && touch $@

# Debian's Fashion-MNIST (real data that ships offline); only when missing
system:
	@if [ ! -f $(FASHION) ] && [ -z "$$CLIPADAPT_FASHION_MNIST" ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dataset-fashion-mnist; fi

# Debian's Chromium and a Japanese font for the browser test of the built book (tests/test_browser.py); only when missing
browser:
	@missing=""; [ -x /usr/bin/chromium ] || missing="chromium"; \
	(command -v fc-list >/dev/null && fc-list :lang=ja | grep -q .) || missing="$$missing fonts-ipafont-gothic"; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

# the tiny CLIP pretrained on the micro-world (cached under $$CLIPADAPT_CACHE or ~/.cache/clipadapt)
assets: env system
	$(PY) data_scripts/build_ci_assets.py

# the tiny models packed as this version's release assets (dist/assets/: two tars and SHA256SUMS), for the GitHub
# release of the tag; Colab's install cell fetches them instead of building for 12 minutes
release-assets: assets
	$(PY) data_scripts/release_assets.py

book: assets
	$(PY) -m clipadapt.book build --profile $(PROFILE)

# the training decks (one per chapter and language, _build/_build/html/slides/) from the notebooks the book ran;
# `make book` writes them too, this rebuilds them alone
slides: env
	$(PY) -m clipadapt.book slides

test: assets browser
	$(PY) -m pytest

# daily work: unit tests, the contract matrix and each chapter's claim at a small size (no notebooks, no book)
test-fast: assets
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf _build results
