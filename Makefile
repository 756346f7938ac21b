# Set-up and test entry points; README documents `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install demo test cluster-up cluster-down clean

$(BIN)/hpcenv: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/hpcenv

demo: install
	./examples/quickstart.sh

test: install
	./tests/run

clean:
	rm -rf $(VENV) .hpcenv-demo
