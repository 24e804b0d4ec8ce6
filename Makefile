# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install corolla, generate from the shipped model, train the demo
#               preset on the bundled flowers and draw the figures under runs/demo/
#   make test   create .venv, install corolla with its test extras (and Debian's Chromium for the
#               browser tests), run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN := runs/demo

.PHONY: demo test benchmark clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,serve,tensorboard,wandb]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/corolla sample -n 64 --steps 20 --seed 0 --out $(RUN)/pretrained_samples.png
	$(BIN)/corolla class-grid --out $(RUN)/species.png
	$(BIN)/corolla train --preset demo --out $(RUN) --overwrite
	$(BIN)/corolla sample $(RUN) -n 64 --steps 20 --seed 0 --out $(RUN)/samples.png
	$(BIN)/corolla schedules --out $(RUN)/schedules.png
	$(BIN)/corolla noising --out $(RUN)/noising.png
	$(BIN)/corolla sweep $(RUN) --steps 1,2,5,10,20,50 --seed 0 -n 8 --out $(RUN)/sweep.png
	$(BIN)/corolla interpolate $(RUN) --seeds 3 7 --frames 10 --out $(RUN)/interpolation.png
	$(BIN)/corolla trajectory $(RUN) --seed 0 --steps 20 --out $(RUN)/trajectory.png
	$(BIN)/corolla evaluate $(RUN) --samples 64 --steps 20 --json $(RUN)/evaluation.json --pairs $(RUN)/nearest_pairs.png

test: $(BIN)/.installed
	@# the browser tests drive Debian's Chromium; without it they skip, saying so
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "make: could not install chromium: the browser tests will be skipped"
	$(BIN)/python -m pytest -q

benchmark: $(BIN)/.installed
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs
