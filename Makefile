# The two commands: `make run` and `make test`. Both install what they need first.
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(PATH)

.PHONY: run test setup setup-test engines lint docs bench clean

run: setup
	uv run uploader serve

test: setup-test engines
	uv run ruff check .
	uv run ruff format --check .
	uv run mypy
	uv run pytest

setup:
	@bash infra/setup.sh run

setup-test:
	@bash infra/setup.sh test

# Kafka, MinIO and FerretDB, built once into ~/.cache/imaging-uploader/engines (reused later).
engines:
	@bash infra/engines/build.sh

lint:
	uv run ruff check .
	uv run ruff format --check .
	uv run mypy

docs:
	uv run uploader docs docs

bench: setup-test engines
	uv run python bench/streaming_upload.py
	uv run python bench/direct_pipeline.py
	uv run python bench/read_scale.py
	uv run python bench/zip_extract.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
