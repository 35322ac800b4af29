# The README's two commands: `make demo` and `make test`. Both run `make setup` first.
PY      := .venv/bin/python
STAMP   := .venv/.installed
export PYOPENGL_PLATFORM ?= egl
export EGL_PLATFORM ?= surfaceless

.PHONY: setup demo demo-seeds test test-slow bench gpu-smoke tensorboard clean-data

setup: $(STAMP)
	@bash scripts/check_system.sh

# Re-installs only when requirements.txt changes (the stamp is newer otherwise).
$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade "pip<26"
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

demo: setup
	$(PY) scripts/demo.py

# the demo's training stages with seeds 0, 1, 2 and bootstrap intervals over test models: logs/demo-seeds/results.md
demo-seeds: setup
	$(PY) scripts/demo.py --seeds 3

test: setup
	$(PY) -m pytest -q -m "not slow" tests

# real-size (ViT-B/32) checks, a few minutes on a CPU
test-slow: setup
	$(PY) -m pytest -q -m slow tests

bench: setup
	$(PY) bench/bench_render.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_eval.py

# ViT-B/32 (random weights) on every visible GPU: full fine-tune + resume, linear probe, evaluation (bench/bench_gpu.py)
gpu-smoke: setup
	$(PY) bench/bench_gpu.py

tensorboard: setup
	.venv/bin/tensorboard --logdir logs/

clean-data:
	rm -rf data/pix3d_toy logs/demo
