# Set-up is two commands: `make run` (the bundled demo) and `make test` (the test suite).
# Each creates the virtual environment and installs QuietLens into it on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PACKAGER := $(VENV)/.packager

.PHONY: run test gui bench package clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo job, then the app on its low-dose scan. Where no window can open (no display, missing system
# libraries: the app says which and how to install them), say how to open it later instead of failing.
run: $(STAMP)
	$(BIN)/quietlens demo -o out/demo
	@$(BIN)/quietlens-gui out/demo/low_dose.dcm || \
	echo "The app could not open a window here (see above). Open the demo later with:  $(BIN)/quietlens-gui out/demo/low_dose.dcm"

test: $(STAMP)
	$(BIN)/python -m pytest -q

$(PACKAGER): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,package]'
	touch $(PACKAGER)

# The Linux desktop bundle (dist/quietlens/, see README), then its smoke test. Takes minutes, so it is
# not part of `make test`.
package: $(PACKAGER)
	$(BIN)/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller packaging/quietlens.spec
	QT_QPA_PLATFORM=offscreen dist/quietlens/quietlens-gui --self-test
	dist/quietlens/quietlens --self-test

gui: $(STAMP)
	$(BIN)/quietlens-gui

clean:
	rm -rf out build dist *.egg-info .pytest_cache
