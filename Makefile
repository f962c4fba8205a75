# Set-up is two commands: `make run` (the bundled demo) and `make test` (the test suite).
# Each creates the virtual environment and installs QuietLens into it on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test gui bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo job, then the app on its low-dose scan when there is a display to show it on.
run: $(STAMP)
	$(BIN)/quietlens demo -o out/demo
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then $(BIN)/quietlens-gui out/demo/low_dose.dcm; \
	else echo "No display found: open the demo in the app later with  $(BIN)/quietlens-gui out/demo/low_dose.dcm"; fi

test: $(STAMP)
	$(BIN)/python -m pytest -q

gui: $(STAMP)
	$(BIN)/quietlens-gui

clean:
	rm -rf out build *.egg-info .pytest_cache
