# The README's two commands: `make demo` and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision: any release >= 2.4 / 0.19 works; pip picks what the machine offers.
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

# Data for the demo: DATA=<ImageFolder> if given, else ../shared/data/cifar10 if present,
# else torchvision's CIFAR-10 download (needs internet).
DATA ?= $(if $(wildcard ../shared/data/cifar10/train),../shared/data/cifar10,cifar10)
MINUTES ?= 10
OUT ?= runs/demo

.PHONY: demo test install docs docs-serve wheel clean

# [test] holds every runtime extra (mocolab[all]: timm, pycocotools, matplotlib, scikit-learn,
# tensorboard) besides pytest, ruff, import-linter, build and twine
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e '.[test,docs]'
	touch $(DOCS_STAMP)

install: $(STAMP)

# A second `make demo` replaces the first run (--overwrite): the old runs/demo is moved aside, as a
# whole, to runs/demo.replaced-<timestamp>/ (never mixed with the new one); `make clean` removes them.
demo: $(STAMP)
	$(BIN)/mocolab pretrain --preset cifar10_cpu --data $(DATA) --out $(OUT) --budget-minutes $(MINUTES) --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the docs site, into build/site (open build/site/index.html); --strict: a broken link or reference fails
docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

docs-serve: $(DOCS_STAMP)
	$(BIN)/mkdocs serve

# build the wheel and sdist, install the wheel in a clean venv and run it from outside the repository
wheel: $(STAMP)
	bash .ci/wheel_check.sh

clean:
	rm -rf $(VENV) runs .pytest_cache build
