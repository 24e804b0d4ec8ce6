# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install corolla, generate from the shipped model, train the demo
#               preset on the bundled flowers and draw the figures under runs/demo/
#   make test   create .venv, install corolla with its test and docs extras (and Debian's Chromium
#               for the browser tests), lint with ruff, run the test suite, which builds the docs
#               site (strict)
# and, for the docs:
#   make docs     build the site from docs/ into site/ (strict: a broken link or a missing page
#                 fails); open site/index.html from disk
#   make figures  redraw every figure of the docs from the shipped models, and the web page's
#                 screenshot in Chromium (minutes on a CPU; not run by make test)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN := runs/demo

.PHONY: install demo test quick chromium docs figures benchmark clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,serve,tensorboard,wandb,docs]'
	touch $@

install: $(BIN)/.installed

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

test: $(BIN)/.installed chromium
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# the inner loop: lint and every test but the slow ones (subprocesses, torchrun, Chromium)
quick: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

# the browser tests and make figures drive Debian's Chromium; without it the tests skip, saying so
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "make: could not install chromium: the browser tests will be skipped"

# Material for MkDocs prints a notice about MkDocs 2 on every build; the build itself is unchanged
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Every figure the docs show, from the shipped models (flowers64 by default) with fixed seeds; the
# photos are bundled ones. docs/flowers64/ and the models' own pictures belong to their runs.
FIG := docs/figures
PHOTO = corolla/assets/flowers/image_$(1).jpg
figures: $(BIN)/.installed chromium
	$(BIN)/corolla schedules --out $(FIG)/schedules.png
	$(BIN)/corolla noising --times 0,0.2,0.4,0.6,0.8,1 --size 48 --out $(FIG)/noising.png
	OMP_NUM_THREADS=1 $(BIN)/corolla sweep --steps 1,2,3,5,10,20,50 --seed 0 -n 8 --out $(FIG)/sweep.png
	$(BIN)/corolla interpolate --seeds 3 7 11 12 --frames 10 --out $(FIG)/interp.png --gif $(FIG)/interp.gif
	$(BIN)/corolla trajectory --seed 0 --steps 20 --out $(FIG)/traj.png
	@# the loss curves of the run that made flowers64, redrawn from its log (titled by a folder of its name)
	$(BIN)/python -c "import pathlib, shutil, sys, tempfile; from corolla import figures; \
		run = pathlib.Path(tempfile.mkdtemp(), 'flowers64'); run.mkdir(); shutil.copy('docs/flowers64/metrics.jsonl', run); \
		shutil.copy(figures.plot_training(run), sys.argv[1]); shutil.rmtree(run.parent)" $(FIG)/loss.png
	$(BIN)/corolla edit $(call PHOTO,02209) $(call PHOTO,06199) --strength 0,0.2,0.4,0.6,0.8,1 -n 2 --seed 0 \
		--figure $(FIG)/edit_strip.png
	$(BIN)/corolla inpaint $(call PHOTO,02471) $(call PHOTO,05404) --box 16,16,32,32 -n 4 --seed 0 \
		--figure $(FIG)/inpaint.png
	$(BIN)/corolla interpolate --images $(call PHOTO,03590) $(call PHOTO,00296) $(call PHOTO,06199) --seeds 3 \
		--frames 8 --steps 50 --out $(FIG)/interp_photos.png
	$(BIN)/python docs/screenshot.py $(FIG)/serve.png

benchmark: $(BIN)/.installed
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs
