# The README's two commands are `make demo` and `make test`; .ci/run calls `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_SIZE ?= 512

.PHONY: setup demo test test-fast lint bench jars clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -c "from pipelines.session import write_spark_defaults as w; print('spark-submit defaults:', w())"
	touch $@

setup: $(VENV)/.installed

## Command 1: set up, write the demo scenes, ingest them, compute features, train a model
## (once), map land cover with `spark-submit pipelines/classify.py`, and aggregate the maps
## over the demo regions (class areas, index time series, change), printing each result.
demo: setup
	$(PY) -m pipelines.demo --out data/demo --size $(DEMO_SIZE)
	$(PY) -m pipelines.ingest --profile local
	$(PY) -m pipelines.features --profile local
	@if ls output/models/*/metadata.json >/dev/null 2>&1; then \
		echo "train: skipped, a model bundle is already under $(CURDIR)/output/models (classify uses the newest; \`$(PY) -m pipelines.train\` trains another)"; \
	else echo "$(PY) -m pipelines.train --profile local"; $(PY) -m pipelines.train --profile local; fi
	@# spark-submit reads spark-defaults.conf: name the jars Ivy resolved by now (no Ivy run).
	@$(PY) -c "from pipelines.session import write_spark_defaults as w; w()"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" spark-submit pipelines/classify.py
	$(PY) -m pipelines.aggregate --profile local --regions data/demo/regions.geojson \
		--set aggregate.change_from=2024-06 --set aggregate.change_to=2024-08

## Command 2: the whole test suite.
test: setup
	@# podman + runc + debootstrap for tests/test_image.py (Debian, as root; ~70 s once).
	@docker/engine.sh setup || echo "podman unavailable: tests/test_image.py will skip"
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not spark"

lint: setup
	$(VENV)/bin/ruff check pipelines udfs tests bench
	$(VENV)/bin/ruff format --check pipelines udfs tests bench
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/ingest_bench.py --size 5490
	$(PY) bench/features_bench.py --size 5490
	$(PY) bench/classify_bench.py --size 5490

## Fallback when Spark's Ivy cannot resolve Delta: fetch the same jars with Maven.
jars:
	mvn -q dependency:copy -Dartifact=io.delta:delta-spark_4.1_2.13:4.4.0 -DoutputDirectory=.jars
	mvn -q dependency:copy -Dartifact=io.delta:delta-storage:4.4.0 -DoutputDirectory=.jars
	@echo "now run with: --set spark.jars=$$(ls .jars/*.jar | paste -sd, -)"

clean:
	rm -rf output data/demo .pytest_cache
