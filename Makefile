# hipnode — the two commands: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.yaml
APT_PACKAGES := dcmtk orthanc orthanc-dicomweb dicom3tools postgresql libpixelmed-java default-jre-headless chromium npm
# OHIF's prebuilt viewer for the browser test (tests/test_viewer_ohif.py): the npm package's dist/,
# fetched once by `npm pack` (no npm install, no build) into an ignored cache, never at run time
OHIF_VERSION ?= 3.13.2
OHIF_DIR := .cache/ohif-$(OHIF_VERSION)

export HF_HUB_OFFLINE := 1
export YOLO_OFFLINE := 1

.PHONY: run test bench lint typecheck sysdeps venv clean gallery ohif

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

$(VENV)/.stamp-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.stamp-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,train]'
	touch $@ $(VENV)/.stamp-run

venv: $(VENV)/.stamp-run

## Start the node (receiver + one worker) on the embedded defaults / config.yaml.
run: $(VENV)/.stamp-run
	$(BIN)/hipnode run --config $(CONFIG)

## System tools the tests use as real peers. Installed only when missing (needs root).
sysdeps:
	@missing=""; \
	command -v /usr/bin/storescu >/dev/null || missing="$$missing dcmtk"; \
	command -v /usr/sbin/Orthanc >/dev/null || missing="$$missing orthanc"; \
	command -v /usr/bin/dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	test -f /usr/share/java/pixelmed.jar || missing="$$missing libpixelmed-java"; \
	command -v /usr/bin/java >/dev/null || missing="$$missing default-jre-headless"; \
	test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so || missing="$$missing orthanc-dicomweb"; \
	command -v /usr/bin/chromium >/dev/null || missing="$$missing chromium"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

## OHIF viewer dist/ for the browser test, fetched only when missing (npm registry, no install).
ohif: $(OHIF_DIR)/dist/index.html

$(OHIF_DIR)/dist/index.html:
	rm -rf $(OHIF_DIR).tmp && mkdir -p $(OHIF_DIR).tmp
	cd $(OHIF_DIR).tmp && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null && tar xzf ohif-app-$(OHIF_VERSION).tgz
	rm -rf $(OHIF_DIR) && mv $(OHIF_DIR).tmp/package $(OHIF_DIR) && rm -rf $(OHIF_DIR).tmp
	test -f $@

lint: $(VENV)/.stamp-test
	$(BIN)/ruff check node tests benchmarks
	$(BIN)/mypy

typecheck: lint

## Whole suite: system tools, package with test+train extras, lint, types, tests.
test: sysdeps ohif $(VENV)/.stamp-test
	$(BIN)/ruff check node tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

## Benchmarks (results under benchmarks/results/).
bench: sysdeps $(VENV)/.stamp-test
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
