"""The bench stage (stic.stages.bench): every benchmark end to end on a tiny LLaVA, with and
without describe-and-respond; the description cache shared across benchmarks; the CLI
(`stic bench`, `stic bench score`, `stic compare`); bench entries of `stic run` configs."""

from __future__ import annotations

import json
import logging
import socket
import typing
from dataclasses import replace
from pathlib import Path

import pytest

import stic
from stic.cli import main
from stic.config import BENCHMARK_NAMES, BenchConfig, ConfigError
from stic.data.benchmarks import BENCHMARKS, read_benchmark
from stic.data.prompts import DAR_DESCRIBE_PROMPT
from stic.modeling.models import load_model
from stic.pipeline import input_problems, load_run_config, plan
from stic.runtime.manifests import read_manifest
from stic.stages.bench import description_cache, run_bench
from tests.data import (
    test_benchmarks_chartqa,
    test_benchmarks_llava_bench_wild,
    test_benchmarks_mathvista_testmini,
    test_benchmarks_mmbench_en_dev,
    test_benchmarks_mmvet,
    test_benchmarks_pope,
    test_benchmarks_scienceqa_img,
    test_benchmarks_textvqa,
)
from tests.data.bench_fixtures import write_jsonl
from tests.modeling.judge_server import ScriptedJudge

PRESET_DIR = Path(stic.__file__).parent / "configs"
# Few tokens and one batch per run: every generate call of the tiny model costs ~0.3 s here.
TOKENS = {"max_new_tokens": 4, "dar_max_new_tokens": 4, "device": "cpu", "batch_size": 8}


def _pope(root: Path) -> tuple[Path, Path]:
    """POPE's random split (the data tests' fixture) and a popular split on the same images."""
    data, images = test_benchmarks_pope._original(root)
    rows = [json.loads(line) for line in (data / "coco_pope_random.json").read_text().splitlines()]
    write_jsonl(
        data / "coco_pope_popular.json",
        [
            {**row, "question_id": 100 + row["question_id"], "text": "Is there a cat?"}
            for row in rows
        ],
    )
    return data, images


def _judge_reply(user: str) -> str:
    # LLaVA-Bench asks for two 1-10 scores on the first line; MM-Vet for a 0-1 correctness.
    return "8 6\nAssistant 1 is more detailed." if "[Assistant 1]" in user else "0.5"


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory) -> dict[str, tuple[Path, Path | None]]:
    """benchmark name -> (data, images) in each one's original release form."""
    root = tmp_path_factory.mktemp("benchmarks")
    pope_data, pope_images = _pope(root / "pope")
    return {
        "scienceqa_img": (test_benchmarks_scienceqa_img._original(root / "sqa"), None),
        "textvqa": (test_benchmarks_textvqa._original(root / "textvqa"), None),
        "chartqa": (test_benchmarks_chartqa._original(root / "chartqa"), None),
        "mmbench_en_dev": (test_benchmarks_mmbench_en_dev._tsv(root / "mmbench"), None),
        "mathvista_testmini": (test_benchmarks_mathvista_testmini._original(root / "mv"), None),
        "llava_bench_wild": (test_benchmarks_llava_bench_wild._original(root / "lbw"), None),
        "mmvet": (test_benchmarks_mmvet._original(root / "mmvet"), None),
        "pope_random": (pope_data, pope_images),
        "pope_popular": (pope_data, pope_images),
    }


@pytest.fixture(scope="module")
def judge():
    with ScriptedJudge() as server:
        server.replier = _judge_reply
        yield server


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    """The tiny LLaVA's folder, and the model loaded once for the in-process runs."""
    folder = tiny_model_factory("llava")
    model, processor = load_model(str(folder), device="cpu")
    return folder, model, processor


def _config(tiny, benchmarks, judge, name: str, out: Path, **kw) -> BenchConfig:
    data, images = benchmarks[name]
    judged = BENCHMARKS[name].judge == "required"
    return BenchConfig(
        benchmark=name,
        data=str(data),
        images=None if images is None else str(images),
        model=str(tiny[0]),
        out=str(out),
        judge_url=judge.url if judged else None,
        judge_model="scripted-judge" if judged else None,
        **{**TOKENS, **kw},
    )


def test_config_choices_are_the_registry():
    (names,) = {typing.get_args(typing.get_type_hints(BenchConfig)["benchmark"])}
    assert names == BENCHMARK_NAMES == tuple(BENCHMARKS)


# POPE's three splits are one reader and scorer: random here, popular in the cache test below.
# AMBER (scored without a model in tests/data/test_benchmarks_amber.py) is not run here yet.
_SKIPPED = ("pope_adversarial", "pope_popular", "amber_discriminative", "amber_generative")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in BENCHMARKS if n not in _SKIPPED])
def test_every_benchmark_end_to_end(tmp_path, tiny, benchmarks, judge, name):
    items = read_benchmark(name, *benchmarks[name])
    for dar in (False, True):
        out = tmp_path / ("dar" if dar else "plain") / f"{name}.json"
        config = _config(tiny, benchmarks, judge, name, out, dar=dar)
        summary = run_bench(config, model=tiny[1], processor=tiny[2])
        result = json.loads(out.read_text())
        assert result["benchmark"] == name and result["n"] == len(items) == summary.items
        assert set(result["metrics"]) >= {BENCHMARKS[name].primary}
        assert summary.details["metrics"] == result["metrics"]
        assert {row["id"] for row in result["items"]} == {item.id for item in items}
        assert all(isinstance(row["prediction"], str) for row in result["items"])
        assert result["dar"] is dar and result["model"] == str(tiny[0])
        assert result["protocol"]["decoding"] == "greedy"
        assert result["protocol"]["max_new_tokens"] == TOKENS["max_new_tokens"]
        assert all(("description" in row) is dar for row in result["items"])
        if dar:
            assert result["protocol"]["describe_and_respond"]["prompt"] == DAR_DESCRIBE_PROMPT
            assert all(row["description"] for row in result["items"])
        if BENCHMARKS[name].judge == "required":
            assert result["judge"]["model"] == "scripted-judge"
            assert result["judge"]["judge_failed"] == 0
        assert read_manifest(out)["status"] == "complete"
    # A rerun is up to date: nothing generated, the model not even needed.
    again = run_bench(config)
    assert again.up_to_date and again.made == 0
    assert again.details["metrics"] == result["metrics"]


@pytest.mark.slow
def test_descriptions_shared_across_benchmarks(tmp_path, tiny, benchmarks, judge, monkeypatch):
    """POPE's random and popular splits ask about the same images: each image is described
    once, by the first run; the second run finds every description in the shared cache."""
    rows: list[int] = []  # batch rows of each generate call of the model
    real_generate = tiny[1].generate

    def counting(**inputs):
        rows.append(len(inputs["input_ids"]))
        return real_generate(**inputs)

    monkeypatch.setattr(tiny[1], "generate", counting)
    images = {
        item.image.digest() for item in read_benchmark("pope_random", *benchmarks["pope_random"])
    }
    results, described = {}, []
    for name in ("pope_random", "pope_popular"):
        out = tmp_path / "stic_dar" / f"{name}.json"
        run_bench(_config(tiny, benchmarks, judge, name, out, dar=True), tiny[1], tiny[2])
        results[name] = json.loads(out.read_text())
        described.append(sum(rows) - results[name]["n"])  # rows that were not answers
        rows.clear()
    assert described == [len(images), 0]  # 5 questions on 5 images; then all from the cache
    cache = tmp_path / "stic_dar" / "dar_descriptions.jsonl"
    assert len(cache.read_text().splitlines()) == len(images)
    by_id = {row["id"]: row["description"] for row in results["pope_random"]["items"]}
    for row in results["pope_popular"]["items"]:
        assert row["description"] == by_id[str(int(row["id"]) - 100)]
    # What else decides a description is in the key: another token limit or adapter is a miss.
    config = _config(tiny, benchmarks, judge, "pope_random", tmp_path / "x.json", dar=True)
    digest = next(iter(images))
    key = description_cache(config).key(digest)
    assert description_cache(replace(config, dar_max_new_tokens=3)).key(digest) != key
    assert description_cache(replace(config, model=str(tmp_path))).key(digest) != key
    assert description_cache(replace(config, batch_size=1, device="cuda")).key(digest) == key


@pytest.mark.slow
def test_judge_failures_asked_again_on_rerun(tmp_path, tiny, benchmarks, judge, monkeypatch):
    """A judge that could not be reached leaves judge_failed items; a rerun generates nothing
    and asks the judge again for just those."""
    import functools

    from stic.modeling import judge as judge_module

    # No backoff between the retries of a refused connection.
    quick = functools.partial(judge_module.JudgeClient, backoff_s=0.0)
    monkeypatch.setattr(judge_module, "JudgeClient", quick)
    with socket.socket() as closed:  # a port nothing listens on: connection refused
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
    config = _config(tiny, benchmarks, judge, "mmvet", tmp_path / "mmvet.json")
    first = run_bench(replace(config, judge_url=down), tiny[1], tiny[2])
    assert first.details["judge_failed"] == first.details["answered"] == 3
    again = run_bench(config)
    assert again.up_to_date and again.made == 0
    result = json.loads((tmp_path / "mmvet.json").read_text())
    assert result["judge"]["judge_failed"] == 0 and result["metrics"]["score"] == 50.0


def test_judged_benchmark_without_judge_refused_before_anything(tmp_path, benchmarks):
    data, _ = benchmarks["mmvet"]
    out = tmp_path / "mmvet.json"
    config = BenchConfig(benchmark="mmvet", data=str(data), model="m", out=str(out))
    with pytest.raises(ConfigError, match="mmvet is scored by a judge model"):
        run_bench(config)
    assert not any(tmp_path.iterdir())


@pytest.fixture
def restore_stic_logging():
    logger = logging.getLogger("stic")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.mark.slow
def test_cli_bench_score_and_compare(tmp_path, tiny, benchmarks, capsys, restore_stic_logging):
    data, images = benchmarks["pope_random"]
    common = ["--benchmark", "pope_random", "--data", str(data), "--images", str(images)]
    model = ["--model", str(tiny[0]), "--device", "cpu", "--max-new-tokens", "4"]
    base, dar = tmp_path / "base", tmp_path / "stic_dar"
    assert main(["bench", *common, *model, "--out", str(base / "pope_random.json")]) == 0
    argv = ["bench", *common, *model, "--dar", "--dar-max-new-tokens", "4"]
    assert main([*argv, "--out", str(dar / "pope_random.json")]) == 0
    assert "bench -> " in capsys.readouterr().out
    # The records are a predictions file: scored again without the model, the same numbers.
    predictions = dar / "pope_random.json.partial.jsonl"
    rescored = tmp_path / "rescored.json"
    score = ["bench", "score", *common, "--predictions", str(predictions), "--out", str(rescored)]
    assert main(score) == 0
    first = json.loads((dar / "pope_random.json").read_text())
    assert json.loads(rescored.read_text())["metrics"] == first["metrics"]
    table = tmp_path / "table.md"
    assert main(["compare", str(base), str(dar), "--out", str(table), "--resamples", "50"]) == 0
    text = table.read_text()
    assert "| pope_random (f1) |" in text and "Δ stic_dar vs base" in text
    assert json.loads(table.with_suffix(".json").read_text())["runs"] == ["base", "stic_dar"]


def test_cli_bench_help_mentions_bench_score(capsys, restore_stic_logging):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "stic bench score" in out and "--benchmark" in out and "--judge-url" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "score", "--help"])
    assert exit_info.value.code == 0
    assert "--predictions" in capsys.readouterr().out


# ----------------------------------------------------------------------------- stic run


def test_run_config_bench_entries_wired_like_eval(tmp_path):
    stages = plan(
        {
            "model": "m",
            "output_dir": str(tmp_path / "run"),
            "pairs": {"images": "imgs"},
            "dpo": {},
            "bench": [
                {"benchmark": "pope_random", "data": "p", "at": "base"},
                {"benchmark": "pope_random", "data": "p", "dar": True},
                {"benchmark": "mmbench_en_dev", "data": "mm", "at": "stage1", "name": "mm_s1"},
            ],
        }
    )
    benches = {s.name: s.config for s in stages if s.stage == "bench"}
    root = tmp_path / "run" / "bench"
    assert benches["base/pope_random"].adapter is None
    assert benches["base/pope_random"].out == str(root / "base" / "pope_random.json")
    assert benches["final_dar/pope_random"].adapter == str(tmp_path / "run" / "dpo")
    assert benches["final_dar/pope_random"].dar is True
    assert benches["mm_s1"].out == str(root / "mm_s1.json")


def test_run_config_bench_problems_in_one_error(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        plan(
            {
                "model": "m",
                "output_dir": str(tmp_path),
                "bench": [
                    {"benchmark": "pope", "data": "p"},
                    {"benchmark": "mmvet", "data": "m"},
                    {"benchmark": "textvqa", "data": "t", "at": "stage1", "adapter": "a"},
                    {"benchmark": "chartqa", "data": "c", "judge_url": "http://x"},
                ],
            }
        )
    lines = str(excinfo.value).splitlines()
    assert any(line.startswith("bench[0].benchmark: 'pope' is not one of") for line in lines)
    assert any(line.startswith("bench[1].judge_url: mmvet is scored by a judge") for line in lines)
    assert any(line.startswith("bench[2].at: 'stage1' needs the stage") for line in lines)
    assert "bench[3].judge_url, judge_model: give both or neither" in lines


def test_run_config_bench_inputs_checked_up_front(tmp_path, benchmarks):
    pope_data, pope_images = benchmarks["pope_random"]
    wrong = tmp_path / "not_textvqa"
    wrong.mkdir()
    stages = plan(
        {
            "model": "m",
            "output_dir": str(tmp_path / "run"),
            "bench": [
                {
                    "benchmark": "pope_random",
                    "data": str(pope_data),
                    "images": str(pope_images),
                    "at": "base",
                },
                {"benchmark": "textvqa", "data": str(wrong), "at": "base"},
                {"benchmark": "chartqa", "data": str(tmp_path / "missing"), "at": "base"},
                {
                    "benchmark": "pope_random",
                    "data": str(pope_data),
                    "images": str(wrong),
                    "name": "x",
                    "at": "base",
                },
            ],
        }
    )
    problems = input_problems(stages)
    assert problems[0].startswith("bench[1].data: textvqa: ") and "TextVQA_0.5.1_val" in problems[0]
    assert problems[1] == f"bench[2].data: {tmp_path / 'missing'} does not exist"
    assert (
        problems[2].startswith("bench[3].data: pope_random: ") and "images not found" in problems[2]
    )
    assert len(problems) == 3


@pytest.mark.parametrize("preset", sorted(PRESET_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_presets_list_the_papers_benchmarks_and_pope(preset):
    stages = load_run_config(preset, check_inputs=False)  # the data paths are placeholders
    benches = [s for s in stages if s.stage == "bench"]
    names = {s.name for s in benches}
    paper = ("scienceqa_img", "textvqa", "chartqa", "mmbench_en_dev", "mathvista_testmini")
    for benchmark in (*paper, "llava_bench_wild", "mmvet", "pope_random"):
        assert {f"base/{benchmark}", f"final/{benchmark}", f"final_dar/{benchmark}"} <= names
    final = next(s.config.out for s in stages if s.stage == "sft")
    for s in benches:
        assert s.config.adapter == (None if s.name.startswith("base/") else final)


def test_run_precheck_validates_records_in_one_line_each(tmp_path):
    """stic run's pre-check reads each bench entry with the readers' own validation: a
    malformed record is one line naming file, record and problem, never a traceback."""
    pope = write_jsonl(
        tmp_path / "pope" / "coco_pope_random.json",
        [{"question_id": 1, "image": "a.jpg", "text": "q?", "label": "maybe"}],
    )
    chartqa = tmp_path / "chartqa"
    chartqa.mkdir()
    (chartqa / "test_human.json").write_text('["not a record"]', encoding="utf-8")
    (chartqa / "test_augmented.json").write_text("[]", encoding="utf-8")
    escape = write_jsonl(
        tmp_path / "esc" / "coco_pope_random.json",
        [{"question_id": 2, "image": "../../x.jpg", "text": "q?", "label": "no"}],
    )
    stages = plan(
        {
            "model": "m",
            "output_dir": str(tmp_path / "run"),
            "bench": [
                {"benchmark": "pope_random", "data": str(pope), "at": "base"},
                {"benchmark": "chartqa", "data": str(chartqa), "at": "base"},
                {"benchmark": "pope_random", "data": str(escape), "name": "esc", "at": "base"},
            ],
        }
    )
    problems = input_problems(stages)
    assert len(problems) == 3 and all("\n" not in p for p in problems)
    assert (
        problems[0].startswith("bench[0].data: pope_random: ")
        and "record 1: 'label'" in problems[0]
    )
    # ChartQA's reader does not check its rows yet: read_benchmark still makes it one line.
    assert problems[1].startswith(f"bench[1].data: chartqa: {chartqa}")
    assert problems[2].startswith("bench[2].data: ") and "record 2: image path" in problems[2]
