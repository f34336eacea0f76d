# Two commands set everything up on a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LEGACY := .venv-legacy

.PHONY: test demo bench soak lint clean systemd-analyze

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The official legacy client pins protobuf 3.x, which conflicts with clarifai-grpc:
# it gets a virtualenv of its own, used by tests/test_legacy_client.py.
$(LEGACY)/.installed:
	test -x $(LEGACY)/bin/python || $(PY) -m venv $(LEGACY)
	$(LEGACY)/bin/python -m pip install -q 'clarifai==2.6.2' 'protobuf==3.19.6' \
	    'googleapis-common-protos==1.56.4'
	touch $@

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# systemd-analyze checks the unit files in deploy/ (tests/test_deploy.py).
systemd-analyze:
	command -v systemd-analyze >/dev/null || \
	    (apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd >/dev/null)

test: $(VENV)/.installed $(LEGACY)/.installed systemd-analyze
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	SYNCD_LEGACY_PYTHON=$(CURDIR)/$(LEGACY)/bin/python $(BIN)/python -m pytest

demo: $(VENV)/.installed
	$(BIN)/python -m syncd.demo

# syncd's modules are byte-compiled first, as `pip install` leaves them: the editable install
# does not, and with PYTHONDONTWRITEBYTECODE set every run would compile them again.
bench: $(VENV)/.installed $(LEGACY)/.installed
	$(BIN)/python -m compileall -q syncd
	SYNCD_LEGACY_PYTHON=$(CURDIR)/$(LEGACY)/bin/python $(BIN)/python bench/run.py

soak: $(VENV)/.installed
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) $(LEGACY) demo .pytest_cache .hypothesis
