# Two entry points for a fresh machine: `make demo` and `make test`. Both set up .venv
# (idempotent), install the project with its extras and the Fashion-MNIST Debian package.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.recon-installed
DATA_FILE := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data demo test test-quick bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,peers]'
	touch $(STAMP)

data:
	@if [ -z "$$RECON_DATA_DIR" ] && [ ! -f $(DATA_FILE) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "Fashion-MNIST is missing. Install it as root with:"; \
	    echo "  apt-get update && apt-get install -y dataset-fashion-mnist"; exit 1; \
	  fi; \
	fi

setup: $(STAMP) data

demo: setup
	mkdir -p bases
	$(PY) -m recon.fit --layer conv2 --bases 48 --out bases/demo.h5 --eval
	$(PY) -m recon.evaluate --bases bases/demo.h5

test: setup
	$(PY) -m pytest

# The quick tier (about 1.5 min on 2 cores): no notebooks, no slow tests, no Fashion-MNIST.
test-quick: $(STAMP)
	$(PY) -m pytest tests -o addopts="" -m "not slow and not dataset"

bench: setup
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) bases .pytest_cache .hypothesis
