"""Tests for stic.config (validation, hashing), the run-config planner and every shipped preset."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import yaml

import stic
from stic.cli import VERBS, main
from stic.config import (
    ConfigError,
    DPOConfig,
    EvalConfig,
    InfuseConfig,
    PairsConfig,
    SFTConfig,
    build,
    config_hash,
    identity,
)
from stic.pipeline import load_run_config, plan
from stic.stages.registry import STAGES

PRESET_DIR = Path(stic.__file__).parent / "configs"
PRESETS = sorted(PRESET_DIR.glob("*.yaml"))
PAPER_MODELS = {
    "llava-hf/llava-1.5-7b-hf",
    "llava-hf/llava-v1.6-mistral-7b-hf",
    "Qwen/Qwen2-VL-7B-Instruct",
}

DPO_REQUIRED = {"model": "m", "out": "o", "images": "i", "pairs": "p.jsonl"}
PAIRS_REQUIRED = {"model": "m", "images": "i", "out": "o.jsonl"}


def _error_lines(excinfo: pytest.ExceptionInfo) -> list[str]:
    return str(excinfo.value).splitlines()


def _line_for(lines: list[str], key: str) -> str:
    """The one error line about ``key`` (a prefixed key such as ``dpo.lr``)."""
    found = [line for line in lines if line.startswith(f"{key}:")]
    assert len(found) == 1, f"expected one line about {key!r} in {lines}"
    return found[0]


# ----------------------------------------------------------------------------- build


def test_build_applies_defaults_and_values():
    config = build(DPOConfig, {**DPO_REQUIRED, "beta": 0.2, "max_steps": 3}, "dpo.")
    assert isinstance(config, DPOConfig)
    assert config.beta == 0.2
    assert config.max_steps == 3
    assert config.alpha == 1 / 1024
    assert config.lr == 1e-7  # DPO overrides the training default (2e-5)
    assert config.nll_normalization == "sum"


def test_build_accepts_int_for_float_and_null_for_optional():
    config = build(DPOConfig, {**DPO_REQUIRED, "lr": 0, "max_steps": None}, "dpo.")
    assert config.lr == 0
    assert config.max_steps is None


def test_build_unknown_key_is_named_with_prefix_and_suggestion():
    with pytest.raises(ConfigError) as info:
        build(PairsConfig, {**PAIRS_REQUIRED, "batch-size": 4, "colour": 1}, "pairs.")
    lines = _error_lines(info)
    assert _line_for(lines, "pairs.batch-size") == (
        "pairs.batch-size: unknown key (did you mean 'batch_size'?)"
    )
    assert _line_for(lines, "pairs.colour") == "pairs.colour: unknown key"


def test_build_wrong_types_are_named():
    data = {
        **DPO_REQUIRED,
        "lr": "fast",
        "lora_r": 1.5,
        "gradient_checkpointing": "yes",
        "epochs": True,
        "nll_normalization": "token",
        "max_steps": "10",
    }
    with pytest.raises(ConfigError) as info:
        build(DPOConfig, data, "dpo.")
    lines = _error_lines(info)
    assert _line_for(lines, "dpo.lr") == "dpo.lr: 'fast' is not float"
    assert _line_for(lines, "dpo.lora_r") == "dpo.lora_r: 1.5 is not int"
    assert _line_for(lines, "dpo.gradient_checkpointing") == (
        "dpo.gradient_checkpointing: 'yes' is not bool"
    )
    assert _line_for(lines, "dpo.epochs") == "dpo.epochs: True is not float"
    assert _line_for(lines, "dpo.nll_normalization") == (
        "dpo.nll_normalization: 'token' is not one of 'sum', 'mean'"
    )
    assert _line_for(lines, "dpo.max_steps") == "dpo.max_steps: '10' is not int or null"
    assert len(lines) == 6


def test_build_missing_required_keys_are_named():
    with pytest.raises(ConfigError) as info:
        build(DPOConfig, {"model": "m"}, "dpo.")
    assert sorted(_error_lines(info)) == [
        "dpo.images: required",
        "dpo.out: required",
        "dpo.pairs: required",
    ]


def test_build_out_of_range_values_are_named():
    data = {**PAIRS_REQUIRED, "top_p": 2, "temperature": -0.1, "batch_size": 0, "limit": 0}
    with pytest.raises(ConfigError) as info:
        build(PairsConfig, data, "pairs.")
    lines = _error_lines(info)
    assert _line_for(lines, "pairs.top_p") == "pairs.top_p: 2 is not allowed (must be in [0, 1])"
    assert _line_for(lines, "pairs.temperature").startswith("pairs.temperature: -0.1")
    assert "must be >= 0" in _line_for(lines, "pairs.temperature")
    assert "must be >= 1" in _line_for(lines, "pairs.batch_size")
    assert "must be >= 1 or null" in _line_for(lines, "pairs.limit")


def test_build_bad_ray_pool_is_named():
    data = {**PAIRS_REQUIRED, "ray": " ", "workers": 0, "worker_gpus": -1, "worker_cpus": 0}
    with pytest.raises(ConfigError) as info:
        build(PairsConfig, data, "pairs.")
    assert sorted(_error_lines(info)) == [
        "pairs.ray: must not be empty",
        "pairs.worker_cpus: 0 is not allowed (must be > 0)",
        "pairs.worker_gpus: -1 is not allowed (must be >= 0 or null)",
        "pairs.workers: 0 is not allowed (must be >= 1 or null)",
    ]


def test_build_beta_zero_is_refused():
    with pytest.raises(ConfigError) as info:
        build(DPOConfig, {**DPO_REQUIRED, "beta": 0}, "dpo.")
    assert _error_lines(info) == ["dpo.beta: 0 is not allowed (must be > 0)"]


def test_build_empty_path_is_refused():
    with pytest.raises(ConfigError, match=r"^dpo\.pairs: must not be empty$"):
        build(DPOConfig, {**DPO_REQUIRED, "pairs": "  "}, "dpo.")


def test_build_reports_every_kind_of_problem_in_one_error():
    """Unknown key, wrong type, missing key and out-of-range values: one error lists them all."""
    data = {
        "model": "m",
        "out": "o",
        "images": "i",
        # "pairs" missing
        "lrate": 1e-7,  # unknown
        "lr": "fast",  # wrong type
        "beta": 0,  # out of range
        "top_k": 3,  # unknown
        "lora_dropout": 2,  # out of range
    }
    with pytest.raises(ConfigError) as info:
        build(DPOConfig, data, "dpo.")
    message = str(info.value)
    for key in ("dpo.lrate", "dpo.lr", "dpo.pairs", "dpo.beta", "dpo.top_k", "dpo.lora_dropout"):
        assert f"{key}:" in message, f"{key} not named in:\n{message}"


def test_pairs_defaults_are_the_papers():
    config = build(PairsConfig, PAIRS_REQUIRED)
    assert (config.temperature, config.max_new_tokens, config.top_p) == (0.2, 1024, 1.0)
    assert (config.bad_prompt_prob, config.lowres_prob, config.lowres_short_side) == (0.5, 0.5, 20)
    assert (config.jitter_brightness, config.jitter_hue) == (0.5, 0.3)


# ----------------------------------------------------------------------------- config_hash


def test_config_hash_ignores_runtime_fields():
    base = build(PairsConfig, PAIRS_REQUIRED)
    ray = {"ray", "workers", "worker_gpus", "worker_cpus", "ray_timeout"}  # where, not what
    speed = {"overwrite", "device", "batch_size", "vllm_gpu_memory", "limit"}
    assert set(PairsConfig.RUNTIME_FIELDS) == {*speed, *ray}
    runtime = build(
        PairsConfig,
        {**PAIRS_REQUIRED, "batch_size": 64, "limit": 10, "device": "cpu", "overwrite": True},
    )
    assert config_hash(runtime) == config_hash(base)
    on_ray = {"ray": "local", "workers": 4, "worker_gpus": 0.5, "worker_cpus": 2, "ray_timeout": 5}
    runtime = build(PairsConfig, {**PAIRS_REQUIRED, **on_ray})
    assert config_hash(runtime) == config_hash(base)
    assert len(config_hash(base)) == 16
    assert config_hash(base) == config_hash(build(PairsConfig, PAIRS_REQUIRED))


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 43},
        {"temperature": 0.3},
        {"model": "other"},
        {"bad_prompt_prob": 0.4},
        {"max_new_tokens": 512},
        {"images": "j"},
    ],
)
def test_config_hash_changes_with_fields_that_decide_the_result(change):
    base = build(PairsConfig, PAIRS_REQUIRED)
    assert config_hash(build(PairsConfig, {**PAIRS_REQUIRED, **change})) != config_hash(base)


def test_config_hash_training_runtime_fields():
    base = build(DPOConfig, DPO_REQUIRED)
    runtime = build(
        DPOConfig,
        {**DPO_REQUIRED, "save_steps": 7, "logging_steps": 1, "gradient_checkpointing": True},
    )
    assert config_hash(runtime) == config_hash(base)
    for change in ({"beta": 0.2}, {"alpha": 0.0}, {"nll_normalization": "mean"}, {"lr": 1e-6}):
        assert config_hash(build(DPOConfig, {**DPO_REQUIRED, **change})) != config_hash(base)


# Computed on main before the fields `adapter` (pairs, dpo) and `reference` (dpo) existed:
# outputs made then must keep their hash, so that a rerun resumes or skips them as before.
HASHES_BEFORE_ROUNDS = {"pairs": "5126c7ac2815dba1", "dpo": "93dca818de03ecd0"}


def _hash_fixture(cls, **extra):
    paths = {
        "images": "/nonexistent/images",
        "out": "/nonexistent/pairs.jsonl" if cls is PairsConfig else "/nonexistent/dpo",
    }
    if cls is DPOConfig:
        paths["pairs"] = "/nonexistent/pairs.jsonl"
    return cls(model="org/model", **paths, **extra)


def test_fields_added_for_rounds_leave_the_default_hash_unchanged():
    assert config_hash(_hash_fixture(PairsConfig)) == HASHES_BEFORE_ROUNDS["pairs"]
    assert config_hash(_hash_fixture(DPOConfig)) == HASHES_BEFORE_ROUNDS["dpo"]
    # ... and out of what a manifest records.
    assert "adapter" not in identity(_hash_fixture(PairsConfig))
    assert not {"adapter", "reference"} & set(identity(_hash_fixture(DPOConfig)))


def test_fields_added_for_rounds_change_the_hash_when_set():
    pairs = _hash_fixture(PairsConfig, adapter="/nonexistent/round_1/dpo")
    assert config_hash(pairs) != HASHES_BEFORE_ROUNDS["pairs"]
    assert identity(pairs)["adapter"] == "/nonexistent/round_1/dpo"
    start = _hash_fixture(DPOConfig, adapter="/nonexistent/round_1/dpo")
    base = _hash_fixture(DPOConfig, adapter="/nonexistent/round_1/dpo", reference="base")
    assert len({config_hash(start), config_hash(base), HASHES_BEFORE_ROUNDS["dpo"]}) == 3


def test_a_starting_adapter_as_reference_needs_precomputed_reference_logps():
    with pytest.raises(ConfigError) as e:
        build(DPOConfig, {**DPO_REQUIRED, "adapter": "a", "precompute_reference": "off"})
    assert str(e.value).startswith("precompute_reference: 'off' is not allowed")
    for ok in ({"reference": "base"}, {"precompute_reference": "on"}):
        build(DPOConfig, {**DPO_REQUIRED, "adapter": "a", "precompute_reference": "off", **ok})
    with pytest.raises(ConfigError, match="reference: 'previous' is not one of 'start', 'base'"):
        build(DPOConfig, {**DPO_REQUIRED, "reference": "previous"})


def test_every_runtime_field_is_a_field():
    for cls in (stage.config for stage in STAGES.values()):
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(cls.RUNTIME_FIELDS) <= names, cls.__name__


# ----------------------------------------------------------------------------- pipeline.plan


def _full_run(tmp_path: Path) -> dict:
    return {
        "model": "tiny",
        "output_dir": str(tmp_path / "run"),
        "seed": 7,
        "pairs": {"images": "imgs", "limit": 4},
        "dpo": {"beta": 0.2},
        "infuse": {"data": "instruct.json", "images": "llava_imgs"},
        "sft": {"lr": 1e-5},
        "eval": [
            {"name": "b", "at": "base", "data": "v.jsonl", "images": "vi"},
            {"name": "s1", "at": "stage1", "data": "v.jsonl", "images": "vi"},
            {"name": "f", "at": "final", "data": "v.jsonl", "images": "vi", "dar": True},
            {"name": "default", "data": "v.jsonl", "images": "vi"},
        ],
    }


def _by_name(stages) -> dict:
    return {s.name: s.config for s in stages}


def test_plan_wires_outputs_to_inputs(tmp_path):
    stages = plan(_full_run(tmp_path))
    root = tmp_path / "run"
    assert [s.stage for s in stages] == ["pairs", "dpo", "infuse", "sft"] + ["eval"] * 4
    c = _by_name(stages)
    assert isinstance(c["pairs"], PairsConfig)
    assert c["pairs"].out == str(root / "pairs" / "pairs.jsonl")
    assert isinstance(c["dpo"], DPOConfig)
    assert c["dpo"].pairs == c["pairs"].out
    assert c["dpo"].out == str(root / "dpo")
    assert c["dpo"].images == "imgs"  # taken from pairs
    assert isinstance(c["infuse"], InfuseConfig)
    assert c["infuse"].adapter == c["dpo"].out
    assert c["infuse"].out == str(root / "infuse" / "infused.json")
    assert isinstance(c["sft"], SFTConfig)
    assert c["sft"].adapter == c["dpo"].out
    assert c["sft"].data == c["infuse"].out
    assert c["sft"].images == "llava_imgs"  # taken from infuse
    assert c["sft"].out == str(root / "sft")
    assert all(isinstance(c[n], EvalConfig) for n in ("b", "s1", "f", "default"))
    assert c["b"].adapter is None
    assert c["s1"].adapter == c["dpo"].out
    assert c["f"].adapter == c["sft"].out
    assert c["default"].adapter == c["sft"].out
    assert c["f"].dar is True
    assert c["f"].out == str(root / "eval" / "f.json")
    # Shared keys reach every stage; section values stay in their section.
    assert {cfg.seed for cfg in c.values()} == {7}
    assert {cfg.model for cfg in c.values()} == {"tiny"}
    assert c["pairs"].limit == 4
    assert c["dpo"].beta == 0.2
    assert c["sft"].lr == 1e-5


def test_plan_final_is_stage1_without_sft(tmp_path):
    data = _full_run(tmp_path)
    del data["infuse"], data["sft"]
    data["eval"] = {"name": "only", "data": "v.jsonl", "images": "vi"}  # one mapping is one entry
    c = _by_name(plan(data))
    assert c["only"].adapter == c["dpo"].out


def test_plan_section_images_override_the_wired_default(tmp_path):
    data = _full_run(tmp_path)
    data["dpo"]["images"] = "elsewhere"
    assert _by_name(plan(data))["dpo"].images == "elsewhere"


@pytest.mark.parametrize(
    ("stage", "key"),
    [
        ("pairs", "out"),
        ("dpo", "out"),
        ("dpo", "pairs"),
        ("infuse", "out"),
        ("infuse", "adapter"),
        ("sft", "out"),
        ("sft", "data"),
        ("sft", "adapter"),
    ],
)
def test_plan_wired_key_set_by_hand_is_named(tmp_path, stage, key):
    data = _full_run(tmp_path)
    data[stage][key] = "by_hand"
    with pytest.raises(ConfigError) as info:
        plan(data)
    assert _line_for(_error_lines(info), f"{stage}.{key}") == (
        f"{stage}.{key}: set by the pipeline (remove it)"
    )


@pytest.mark.parametrize("key", ["out", "adapter"])
def test_plan_eval_wired_key_set_by_hand_is_named(tmp_path, key):
    data = _full_run(tmp_path)
    data["eval"][1][key] = "x"
    with pytest.raises(ConfigError) as info:
        plan(data)
    assert _line_for(_error_lines(info), f"eval[1].{key}").startswith(
        f"eval[1].{key}: set by the pipeline"
    )


def test_plan_unwired_inputs_may_be_set_by_hand(tmp_path):
    # Without the stage that makes them, inputs are the user's to give.
    data = {
        "model": "m",
        "output_dir": str(tmp_path),
        "dpo": {"pairs": "mine.jsonl", "images": "imgs"},
    }
    (dpo,) = plan(data)
    assert dpo.config.pairs == "mine.jsonl"
    assert dpo.config.out == str(tmp_path / "dpo")


def test_plan_unknown_top_level_key(tmp_path):
    data = _full_run(tmp_path)
    data["stage3"] = {}
    with pytest.raises(ConfigError) as info:
        plan(data)
    assert _line_for(_error_lines(info), "stage3").startswith("stage3: unknown key (allowed: ")


def test_plan_eval_entry_unknown_key(tmp_path):
    data = _full_run(tmp_path)
    data["eval"][0]["foo"] = 1
    with pytest.raises(ConfigError) as info:
        plan(data)
    assert _line_for(_error_lines(info), "eval[0].foo") == "eval[0].foo: unknown key"


def test_plan_eval_bad_at(tmp_path):
    data = _full_run(tmp_path)
    data["eval"][2]["at"] = "stage2"
    with pytest.raises(ConfigError) as info:
        plan(data)
    assert _line_for(_error_lines(info), "eval[2].at") == (
        "eval[2].at: 'stage2' is not one of base, stage1, final"
    )


def test_plan_eval_at_stage1_needs_dpo(tmp_path):
    data = {
        "model": "m",
        "output_dir": str(tmp_path),
        "eval": [{"at": "stage1", "data": "v.jsonl", "images": "vi"}],
    }
    with pytest.raises(ConfigError, match=r"eval\[0\]\.at: 'stage1' needs the stage"):
        plan(data)


def test_plan_eval_duplicate_name(tmp_path):
    data = _full_run(tmp_path)
    data["eval"][3]["name"] = "b"
    with pytest.raises(ConfigError, match=r"eval\[3\]\.name: 'b' is used twice"):
        plan(data)


def test_plan_section_that_is_not_a_mapping(tmp_path):
    data = _full_run(tmp_path)
    data["dpo"] = ["beta", 0.1]
    with pytest.raises(ConfigError) as info:
        plan(data)
    assert _line_for(_error_lines(info), "dpo") == "dpo: must be a mapping of keys to values"


def test_plan_eval_entry_that_is_not_a_mapping(tmp_path):
    data = _full_run(tmp_path)
    data["eval"][1] = "v.jsonl"
    with pytest.raises(ConfigError) as info:
        plan(data)
    assert "eval[1]: must be a mapping of keys to values" in _error_lines(info)


@pytest.mark.parametrize("data", [None, [], ["model: m"], "model: m"])
def test_plan_run_config_must_be_a_mapping(data):
    if data is None:
        with pytest.raises(ConfigError, match="output_dir: required"):
            plan(data)  # an empty YAML file is an empty mapping
        return
    with pytest.raises(ConfigError, match="the run config must be a YAML mapping"):
        plan(data)


def test_plan_requires_model_output_dir_and_a_stage(tmp_path):
    with pytest.raises(ConfigError) as info:
        plan({"pairs": {"images": "i"}})
    assert set(_error_lines(info)) == {"model: required", "output_dir: required"}
    with pytest.raises(ConfigError, match="no stage sections"):
        plan({"model": "m", "output_dir": str(tmp_path)})


def test_plan_section_problems_are_collected_with_their_prefix(tmp_path):
    data = _full_run(tmp_path)
    data["dpo"]["beta"] = 0
    data["pairs"]["top_p"] = 2
    data["sft"]["lr"] = "fast"
    data["eval"][0]["foo"] = 1
    with pytest.raises(ConfigError) as info:
        plan(data)
    lines = _error_lines(info)
    assert "pairs.top_p: 2 is not allowed (must be in [0, 1])" in lines
    assert "dpo.beta: 0 is not allowed (must be > 0)" in lines
    assert "sft.lr: 'fast' is not float" in lines
    assert "eval[0].foo: unknown key" in lines


def test_plan_accepts_keys_with_dashes(tmp_path):
    data = {
        "model": "m",
        "output-dir": str(tmp_path),
        "trust-remote-code": True,
        "pairs": {"images": "i", "batch-size": 3, "bad-prompt-prob": 0.25},
        "dpo": {"grad-accum": 2, "nll-normalization": "mean"},
        "eval": [{"data": "v", "images": "vi", "dar-max-new-tokens": 9}],
    }
    c = _by_name(plan(data))
    assert c["pairs"].batch_size == 3
    assert c["pairs"].bad_prompt_prob == 0.25
    assert c["dpo"].grad_accum == 2
    assert c["dpo"].nll_normalization == "mean"
    assert c["eval0"].dar_max_new_tokens == 9
    assert all(cfg.trust_remote_code for cfg in c.values())


def test_plan_empty_section_runs_the_stage_with_defaults(tmp_path):
    text = f"model: m\noutput_dir: {tmp_path}\npairs:\n  images: i\ndpo:\n"
    (tmp_path / "run.yaml").write_text(text, encoding="utf-8")
    stages = load_run_config(tmp_path / "run.yaml", check_inputs=False)  # "i" is not a folder
    assert [s.stage for s in stages] == ["pairs", "dpo"]
    assert stages[1].config.beta == 0.1


def test_load_run_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_run_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)


# ----------------------------------------------------------------------------- shipped presets


def test_presets_exist():
    assert len(PRESETS) >= 3


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_preset_loads_with_the_papers_values(preset):
    stages = load_run_config(preset, check_inputs=False)  # its data paths are placeholders
    c = {s.stage: s.config for s in stages if s.stage not in ("eval", "bench")}
    assert set(c) == {"pairs", "dpo", "infuse", "sft"}, "a preset runs the whole method"
    pairs, dpo, infuse, sft = c["pairs"], c["dpo"], c["infuse"], c["sft"]
    assert pairs.temperature == 0.2
    assert pairs.max_new_tokens == 1024
    assert pairs.top_p == 1.0
    assert (pairs.bad_prompt_prob, pairs.lowres_prob, pairs.lowres_short_side) == (0.5, 0.5, 20)
    assert (pairs.jitter_brightness, pairs.jitter_hue) == (0.5, 0.3)
    assert dpo.beta == 0.1
    assert dpo.alpha == 1 / 1024
    assert dpo.nll_normalization == "sum"
    assert dpo.lr == 1e-7
    if preset.stem.endswith("-24gb"):  # a smaller LoRA of the same alpha/r (see its comments)
        assert dpo.lora_alpha == 2 * dpo.lora_r and dpo.lora_dropout == 0.05
    else:
        assert (dpo.lora_r, dpo.lora_alpha, dpo.lora_dropout) == (128, 256, 0.05)
    assert set(dpo.lora_targets.split(",")) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert dpo.batch_size * dpo.grad_accum == 8  # reference: global batch 8
    assert sft.lr == 2e-5
    assert sft.batch_size * sft.grad_accum == 32  # paper: global batch 32
    for train in (dpo, sft):
        assert train.epochs == 1
        assert train.warmup_ratio == 0.03
        assert train.lr_scheduler == "cosine"
        assert train.max_length >= (1024 if preset.stem.endswith("-24gb") else 2048)
    assert infuse.adapter == dpo.out
    assert sft.adapter == dpo.out
    evals = [s for s in stages if s.stage == "eval"]
    assert evals, "a preset evaluates"
    assert len({s.config.model for s in stages}) == 1


# What a 24 GB preset may change of its model's full preset: how much fits at once, never
# what the method computes per example (learning rates, beta, alpha, prompts, sampling).
MEMORY_KEYS = {"output_dir", "batch_size", "grad_accum", "lora_r", "lora_alpha", "max_length"}


@pytest.mark.parametrize("small", [p for p in PRESETS if p.stem.endswith("-24gb")], ids=str)
def test_a_24gb_preset_changes_only_what_decides_memory(small):
    full = small.with_name(small.name.replace("-24gb", ""))

    def flat(data, prefix=""):
        items = data.items() if isinstance(data, dict) else enumerate(data)
        out = {}
        for key, value in items:
            if isinstance(value, (dict, list)):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a = flat(yaml.safe_load(full.read_text(encoding="utf-8")))
    b = flat(yaml.safe_load(small.read_text(encoding="utf-8")))
    changed = {k.rsplit(".", 1)[-1] for k in set(a) | set(b) if a.get(k) != b.get(k)}
    assert changed <= MEMORY_KEYS, changed - MEMORY_KEYS


def test_presets_cover_the_three_models():
    models = {yaml.safe_load(p.read_text(encoding="utf-8"))["model"] for p in PRESETS}
    assert models >= PAPER_MODELS


# ----------------------------------------------------------------------------- CLI help


@pytest.fixture
def restore_stic_logging():
    # main() configures logging for a terminal; keep that out of other tests.
    logger = logging.getLogger("stic")
    level = logger.level
    yield
    logger.setLevel(level)


def _help_of(capsys, argv: list[str]) -> str:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's --help exits
        rc = e.code
    assert rc in (0, None)
    return capsys.readouterr().out


def _squash(text: str) -> str:
    return "".join(text.split())


def test_top_level_help_lists_every_verb(capsys, restore_stic_logging):
    out = _help_of(capsys, ["--help"])
    assert out.startswith(f"stic {stic.__version__}:")
    verbs = {
        "pairs",
        "dpo",
        "infuse",
        "sft",
        "eval",
        "run",
        "demo",
        "demo-model",
        "merge",
        "convert",
        "doctor",
        "bench",
        "compare",
        "export",
        "report",
        "plan",
    }
    for verb in verbs:
        assert f"  {verb} " in out
    assert set(VERBS) == verbs


def test_no_arguments_prints_usage_and_fails(capsys, restore_stic_logging):
    assert main([]) == 2
    assert "usage: stic <command>" in capsys.readouterr().out


def test_unknown_verb_fails(capsys, restore_stic_logging):
    assert main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err


@pytest.mark.parametrize("verb", sorted(STAGES))
def test_stage_help_mentions_every_field(capsys, restore_stic_logging, verb):
    out = _help_of(capsys, [verb, "--help"])
    cls = STAGES[verb].config
    assert out.startswith(f"usage: stic {verb}")
    squashed = _squash(out)
    assert _squash(cls.__doc__) in squashed
    for f in dataclasses.fields(cls):
        assert f"--{f.name}" in out, f"--{f.name} missing from stic {verb} --help"
        assert _squash(f.metadata["help"]) in squashed, f"help of {f.name} missing"


def test_run_help(capsys, restore_stic_logging):
    out = _help_of(capsys, ["run", "--help"])
    assert "usage: stic run CONFIG.yaml" in out
    assert "output_dir" in out and "at: base | stage1 | final" in out


def test_demo_help(capsys, restore_stic_logging):
    out = _help_of(capsys, ["demo", "--help"])
    assert out.startswith("usage: stic demo")
    for flag in ("--out", "--seeds", "--base", "--split"):
        assert flag in out


def test_stage_flag_value_error_is_reported_with_key(capsys, restore_stic_logging):
    rc = main(["dpo", "--model", "m", "--out", "o", "--images", "i", "--pairs", "p", "--beta", "0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "stic dpo: invalid configuration" in err
    assert "beta: 0.0 is not allowed (must be > 0)" in err


@pytest.mark.parametrize(
    ("cls", "out", "problem"),
    [
        (PairsConfig, "pairs.json", "must end with .jsonl"),
        (PairsConfig, "pairs", "must end with .jsonl"),
        (EvalConfig, "results", "must end with .json"),
        (EvalConfig, "results.txt", "must end with .json"),
        (DPOConfig, "stage1.json", "must be a folder"),
        (SFTConfig, "stage2.jsonl", "must be a folder"),
    ],
)
def test_an_output_suffix_that_names_another_kind_of_output_is_refused(cls, out, problem):
    data = {"model": "m", "images": "i", "out": out, "data": "d", "pairs": "p"}
    fields = {f.name for f in dataclasses.fields(cls)}
    with pytest.raises(ConfigError, match=f"out: '{out}' {problem}"):
        build(cls, {k: v for k, v in data.items() if k in fields})
