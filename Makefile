# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install corolla, generate from the shipped model, train the demo
#               preset on the bundled flowers and draw the figures under runs/demo/
#   make test   create .venv, install corolla with its test extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN := runs/demo

.PHONY: demo test benchmark clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/corolla train --preset demo --out $(RUN)
	$(BIN)/corolla sample $(RUN) -n 64 --steps 20 --seed 0 --out $(RUN)/samples.png

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

benchmark: $(BIN)/.installed
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs
