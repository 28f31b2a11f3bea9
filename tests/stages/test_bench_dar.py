"""Describe-and-respond in `stic bench`, with a scripted backend (no model): what each step is
given (image, prompt, description, the order of description and question, token limits), which
description goes with which question, and what the description cache is keyed by (every input
that changes a description changes the key; nothing else does)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import pytest

from stic.config import BenchConfig
from stic.data.benchmarks import get_spec, read_benchmark
from stic.data.prompts import DAR_DESCRIBE_PROMPT
from stic.stages.bench import description_cache, run_bench
from tests.data import test_benchmarks_pope
from tests.data.bench_fixtures import write_jsonl


@dataclass(frozen=True)
class _Text:
    text: str
    finish: str = "stop"


class ScriptedBackend:
    """Records every request; describes an image by its pixel (each fixture image is one flat
    shade), answers "Yes" to a prompt that mentions a description and "No" otherwise."""

    def __init__(self) -> None:
        self.calls: list[tuple[list, int]] = []

    def generate(self, requests, *, max_new_tokens, **_):
        self.calls.append((list(requests), max_new_tokens))
        out = []
        for request in requests:
            if request.prompt == DAR_DESCRIBE_PROMPT:
                out.append(_Text(f"a picture of shade {_shade(request.image)}"))
            else:
                out.append(_Text("Yes" if "Image description:" in request.prompt else "No"))
        return out

    def describe_calls(self):
        return [(r, k) for r, k in self.calls if r and r[0].prompt == DAR_DESCRIBE_PROMPT]

    def answer_calls(self):
        return [(r, k) for r, k in self.calls if r and r[0].prompt != DAR_DESCRIBE_PROMPT]


def _shade(image) -> tuple:
    return image.convert("RGB").getpixel((0, 0))


@pytest.fixture
def pope(tmp_path):
    """POPE's random split: 5 questions on 5 images of different shades, plus a popular split
    asking other questions about the same images."""
    data, images = test_benchmarks_pope._original(tmp_path / "bench")
    rows = [json.loads(line) for line in (data / "coco_pope_random.json").read_text().splitlines()]
    write_jsonl(
        data / "coco_pope_popular.json",
        [{**r, "question_id": 100 + r["question_id"], "text": "Is there a cat?"} for r in rows],
    )
    return data, images


def _config(pope, out, **kw) -> BenchConfig:
    data, images = pope
    return BenchConfig(
        benchmark=kw.pop("benchmark", "pope_random"),
        data=str(data),
        images=str(images),
        model="tiny/model",
        out=str(out),
        device="cpu",
        batch_size=kw.pop("batch_size", 8),
        **kw,
    )


def test_each_step_sees_its_image_prompt_and_description(tmp_path, pope):
    backend = ScriptedBackend()
    config = _config(pope, tmp_path / "dar" / "pope_random.json", dar=True, dar_max_new_tokens=7)
    run_bench(config, backend=backend)
    items = {i.id: i for i in read_benchmark("pope_random", *pope)}
    ((described, describe_limit),) = backend.describe_calls()
    ((answered, answer_limit),) = backend.answer_calls()
    # step 1: the describe prompt alone, with each image once; its own token limit
    assert describe_limit == 7
    assert all(r.prompt == DAR_DESCRIBE_PROMPT for r in described)
    assert sorted(_shade(r.image) for r in described) == sorted(
        _shade(i.image.load()) for i in items.values()
    )
    # step 2: per question, in the order the items are answered, its own image and
    # "Image description:\n<the description of THAT image>\n\n<protocol prompt>"
    assert answer_limit == get_spec("pope_random").max_new_tokens
    result = json.loads((tmp_path / "dar" / "pope_random.json").read_text())
    assert len(answered) == len(items) == result["n"]
    by_prompt_question = {}
    for request in answered:
        header, description, question = request.prompt.split("\n", 2)
        assert header == "Image description:"
        assert description == f"a picture of shade {_shade(request.image)}"
        by_prompt_question[question] = (description, _shade(request.image))
    for item_id, item in items.items():
        protocol = get_spec("pope_random").prompt(item)
        description, shade = by_prompt_question["\n" + protocol]
        assert shade == _shade(item.image.load())  # the question's own image in step 2
        row = next(r for r in result["items"] if r["id"] == item_id)
        assert row["description"] == description  # recorded with the answer it led to
        assert row["prediction"] == "Yes"
    assert result["protocol"]["describe_and_respond"] == {
        "prompt": DAR_DESCRIBE_PROMPT,
        "max_new_tokens": 7,
    }


def test_without_dar_the_answer_sees_the_protocol_prompt_only(tmp_path, pope):
    backend = ScriptedBackend()
    config = _config(pope, tmp_path / "base" / "pope_random.json", max_new_tokens=5)
    run_bench(config, backend=backend)
    assert backend.describe_calls() == []
    ((answered, limit),) = backend.answer_calls()
    assert limit == 5
    items = read_benchmark("pope_random", *pope)
    protocol = {get_spec("pope_random").prompt(i) for i in items}
    assert {r.prompt for r in answered} == protocol
    result = json.loads((tmp_path / "base" / "pope_random.json").read_text())
    assert "description" not in result["items"][0]
    assert result["adapter"] is None and result["weights"] == "base model"
    assert result["adapter_identity"] is None and result["dar"] is False
    assert not (tmp_path / "base" / "dar_descriptions.jsonl").exists()


def test_descriptions_come_from_the_cache_across_benchmarks_and_batches(tmp_path, pope):
    """The popular split asks about the same 5 images: described by the first run only, in
    batches of 2 as in one batch; the cache file holds one line per image."""
    backend = ScriptedBackend()
    run_bench(_config(pope, tmp_path / "dar" / "pope_random.json", dar=True), backend=backend)
    assert sum(len(r) for r, _ in backend.describe_calls()) == 5
    backend.calls.clear()
    popular = _config(pope, tmp_path / "dar" / "pope_popular.json", dar=True, batch_size=2)
    popular = replace(popular, benchmark="pope_popular")
    run_bench(popular, backend=backend)
    assert backend.describe_calls() == []
    assert len(backend.answer_calls()) == 3  # 5 questions in batches of 2
    cache = tmp_path / "dar" / "dar_descriptions.jsonl"
    assert len(cache.read_text().splitlines()) == 5
    # another token limit for the description: described again
    again = _config(pope, tmp_path / "dar" / "x.json", dar=True, dar_max_new_tokens=3)
    run_bench(again, backend=backend)
    assert sum(len(r) for r, _ in backend.describe_calls()) == 5


def _adapter(folder, weights: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return str(folder)


def test_cache_key_changes_with_every_input_that_changes_a_description(tmp_path, pope, monkeypatch):
    config = _config(pope, tmp_path / "a" / "pope_random.json", dar=True)
    image = "ab" * 32
    key = description_cache(config).key(image)
    adapter = _adapter(tmp_path / "lora", b"one")
    with_adapter = description_cache(replace(config, adapter=adapter)).key(image)
    changed = {
        "image bytes": description_cache(config).key("cd" * 32),
        "model": description_cache(replace(config, model="other/model")).key(image),
        "adapter": with_adapter,
        "token limit": description_cache(replace(config, dar_max_new_tokens=3)).key(image),
    }
    _adapter(tmp_path / "lora", b"two")  # retrained in place: other weights, same path
    changed["adapter retrained"] = description_cache(replace(config, adapter=adapter)).key(image)
    monkeypatch.setattr("stic.stages.bench.DAR_DESCRIBE_PROMPT", "Describe it.")
    changed["prompt"] = description_cache(config).key(image)
    monkeypatch.undo()
    keys = [key, *changed.values()]
    assert len(set(keys)) == len(keys), changed


@pytest.mark.parametrize(
    "change",
    [
        {"benchmark": "pope_popular"},
        {"data": "elsewhere"},
        {"images": "elsewhere"},
        {"out": "elsewhere/x.json"},
        {"max_new_tokens": 3},  # the answer's limit, not the description's
        {"batch_size": 1},
        {"device": "cuda"},
        {"dtype": "float16"},  # by design: the same model in another precision is reused
        {"limit": 2},
        {"seed": 5},  # greedy decoding: the seed decides nothing
        {"judge_url": "http://127.0.0.1:1/v1", "judge_model": "j"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_cache_key_ignores_what_does_not_change_a_description(tmp_path, pope, change):
    config = _config(pope, tmp_path / "a" / "pope_random.json", dar=True)
    image = "ab" * 32
    assert description_cache(replace(config, **change)).key(image) == description_cache(config).key(
        image
    )


def test_model_spelled_two_ways_is_one_key(tmp_path, pope, monkeypatch):
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = _config(pope, tmp_path / "a" / "pope_random.json", dar=True)
    relative = description_cache(replace(config, model="models/tiny")).key("ab")
    assert relative == description_cache(replace(config, model=str(model))).key("ab")


def test_result_records_the_adapter_it_used(tmp_path, pope):
    adapter = _adapter(tmp_path / "lora", b"w")
    config = _config(pope, tmp_path / "s" / "pope_random.json", adapter=adapter)
    run_bench(config, backend=ScriptedBackend())
    result = json.loads((tmp_path / "s" / "pope_random.json").read_text())
    assert result["adapter"] == adapter and result["weights"] == "adapter"
    assert result["adapter_identity"].startswith("dir:")


def test_cache_lines_that_are_not_descriptions_are_misses_not_errors(tmp_path):
    from stic.stages.bench import DescriptionCache

    path = tmp_path / "cache.jsonl"
    path.write_text(
        '[1, 2]\n{"key": "n", "text": 5}\n"text"\n{"key": "ok", "text": "a dog"}\n{"key": "to'
    )
    cache = DescriptionCache(path)
    assert cache.get("ok") == "a dog"
    assert cache.get("n") is None and cache.get("to") is None
    cache.add({"n": "a cat", "é": "ünïcode"})
    again = DescriptionCache(path)  # what another run reads back
    assert again.get("n") == "a cat" and again.get("é") == "ünïcode" and again.get("ok") == "a dog"


class _ShortBackend(ScriptedBackend):
    """Returns one generation fewer than it was asked for (a broken backend)."""

    def generate(self, requests, *, max_new_tokens, **_):
        return super().generate(requests, max_new_tokens=max_new_tokens)[:-1]


def test_a_backend_returning_fewer_descriptions_or_answers_is_an_error(tmp_path, pope):
    from stic.stages.bench import DescriptionCache, answer_batch, describe

    items = read_benchmark("pope_random", *pope)
    images = [item.image.load() for item in items]
    cache = DescriptionCache(tmp_path / "c.jsonl")
    with pytest.raises(ValueError):
        describe(items, images, _ShortBackend(), cache, 5)
    assert not (tmp_path / "c.jsonl").exists()  # nothing half-described was cached
    with pytest.raises(ValueError):
        describe(items, images[:-1], ScriptedBackend(), cache, 5)  # an image short
    config = _config(pope, tmp_path / "x" / "pope_random.json")
    with pytest.raises(ValueError):
        answer_batch(items, images, config, _ShortBackend())
    with pytest.raises(ValueError):
        answer_batch(items, images[:-1], config, ScriptedBackend())


def test_the_cache_file_is_created_with_its_folders_readable_not_executable(tmp_path):
    import os
    import stat

    from stic.stages.bench import DescriptionCache

    path = tmp_path / "new" / "deep" / "cache.jsonl"
    DescriptionCache(path).add({"k": "a dog"})
    assert DescriptionCache(path).get("k") == "a dog"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 & ~umask


def test_answer_batch_describes_into_the_cache_it_is_given_else_the_configs(tmp_path, pope):
    from stic.stages.bench import DescriptionCache, answer_batch

    items = read_benchmark("pope_random", *pope)[:2]
    images = [item.image.load() for item in items]
    config = _config(pope, tmp_path / "out" / "pope_random.json", dar=True)
    mine = tmp_path / "mine.jsonl"
    records = answer_batch(items, images, config, ScriptedBackend(), DescriptionCache(mine))
    assert len(mine.read_text().splitlines()) == 2
    assert not (tmp_path / "out" / "dar_descriptions.jsonl").exists()
    again = answer_batch(items, images, config, ScriptedBackend())
    assert len((tmp_path / "out" / "dar_descriptions.jsonl").read_text().splitlines()) == 2
    assert again == records and records[0]["description"].startswith("a picture of shade")


def test_the_cache_file_holds_one_description_a_line(tmp_path):
    from stic.stages.bench import DescriptionCache

    path = tmp_path / "cache.jsonl"
    DescriptionCache(path).add({"a": "one"})
    DescriptionCache(path).add({"b": "two", "c": "three"})
    lines = path.read_text().split("\n")
    assert len(lines) == 4 and lines[-1] == ""  # three lines, no blank one between appends
    assert [json.loads(line)["key"] for line in lines[:-1]] == ["a", "b", "c"]
