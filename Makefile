# The README's two commands: `make demo` and `make test`. Both run `make setup` first.
PY      := .venv/bin/python
STAMP   := .venv/.installed
APP_STAMP := .venv/.installed-app
# `make app`'s app.py --index and --captioner: make app INDEX=my_index/ CAPTIONER=weights/<run>/best.pt
INDEX     ?= logs/search_example/index
CAPTIONER ?= $(wildcard weights/demo-captioner/best.pt)
export PYOPENGL_PLATFORM ?= egl
export EGL_PLATFORM ?= surfaceless

.PHONY: setup setup-app app demo demo-seeds test test-slow bench gpu-smoke tensorboard clean-data

setup: $(STAMP)
	@bash scripts/check_system.sh

# Re-installs only when requirements.txt changes (the stamp is newer otherwise).
$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade "pip<26"
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# The web page's packages (gradio; selenium for its browser test) on top of the core, into the same .venv; again
# only when requirements-app.txt changes or the core was reinstalled.
$(APP_STAMP): requirements-app.txt $(STAMP)
	$(PY) -m pip install --quiet -r requirements-app.txt
	touch $(APP_STAMP)

setup-app: setup $(APP_STAMP)

# the web page on http://127.0.0.1:7860 (app.py; more flags: make app APP_ARGS="--port 8080 --top_k 24")
app: setup-app
	$(PY) app.py --index $(INDEX) $(if $(CAPTIONER),--captioner $(CAPTIONER)) $(APP_ARGS)

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
	$(PY) bench/bench_search.py
	$(PY) bench/bench_composed.py

# ViT-B/32 (random weights) on every visible GPU: full fine-tune + resume, linear probe, evaluation (bench/bench_gpu.py)
gpu-smoke: setup
	$(PY) bench/bench_gpu.py

tensorboard: setup
	.venv/bin/tensorboard --logdir logs/

clean-data:
	rm -rf data/pix3d_toy data/pix3d_toy_composed logs/demo
