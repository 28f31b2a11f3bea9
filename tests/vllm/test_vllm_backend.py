"""The vLLM backend against the HF backend on the demo model: prompts, records, seeds, adapters,
kills and resumes, the command line. Agreement figures are printed at the end of the run."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from stic.config import EvalConfig, InfuseConfig, PairsConfig
from stic.data.prompts import GOOD_PROMPT, PLAIN_PROMPTS
from stic.modeling.backends import BackendError, vllm_refusal
from stic.modeling.chat import process, render_prompt
from stic.modeling.generation import Request
from stic.runtime.files import read_jsonl
from stic.runtime.manifests import read_manifest
from stic.stages.evaluate import run_eval
from stic.stages.infuse import run_infuse
from stic.stages.pairs import run_pairs
from tests.vllm.agreement import record

# Fields of a pair record that hold generated text (or how it ended); every other field must be
# the same whichever backend made the record.
GENERATED = {"chosen", "rejected", "chosen_finish", "rejected_finish"}


def _eval(model, files, out, backend_name, **kw):
    return EvalConfig(
        model=model,
        data=str(files["vqa"]),
        images=str(files["images"]),
        out=str(out),
        backend=backend_name,
        batch_size=32,
        **kw,
    )


def _predictions(path) -> dict[str, str]:
    return {r["id"]: r["prediction"] for r in json.loads(Path(path).read_text())["items"]}


def test_both_backends_see_the_same_prompt_text_and_tokens(engine, hf_model, eval_files):
    from vllm import SamplingParams

    _, processor = hf_model
    images = sorted(eval_files["images"].iterdir())[:3]
    requests = [
        Request(prompt, Image.open(path).convert("RGB"))
        for path in images
        for prompt in (GOOD_PROMPT, PLAIN_PROMPTS[0], "How many circles are there?")
    ]
    prompts = engine.prompts(requests)
    outputs = engine.llm.generate(prompts, SamplingParams(max_tokens=1), use_tqdm=False)
    for request, prompt, output in zip(requests, prompts, outputs, strict=True):
        text = render_prompt(processor, request.prompt, with_image=True)
        assert prompt["prompt"] == text  # byte-identical text
        hf_ids = process(processor, [text], [request.image])["input_ids"][0].tolist()
        assert list(output.prompt_token_ids) == hf_ids  # BOS, image tokens and all


def test_greedy_eval_answers_agree_with_hf(engine, demo_model, eval_files, tmp_path):
    run_eval(_eval(demo_model, eval_files, tmp_path / "vllm.json", "vllm"), backend=engine)
    run_eval(_eval(demo_model, eval_files, tmp_path / "hf.json", "hf"))
    vllm, hf = _predictions(tmp_path / "vllm.json"), _predictions(tmp_path / "hf.json")
    assert vllm.keys() == hf.keys()
    same = sum(vllm[k] == hf[k] for k in hf)
    record("eval, greedy answers (base model)", same, len(hf))
    assert same >= 0.9 * len(hf)
    results = json.loads((tmp_path / "vllm.json").read_text())
    assert results["n"] == len(hf) and results["model"] == demo_model


def test_pair_records_match_hf_up_to_the_generated_text(engine, demo_model, unlabeled, tmp_path):
    configs = {
        name: PairsConfig(
            model=demo_model,
            images=str(unlabeled),
            out=str(tmp_path / f"{name}.jsonl"),
            backend=name,
            batch_size=4,
            max_new_tokens=48,
            temperature=0.0,
        )
        for name in ("vllm", "hf")
    }
    run_pairs(configs["vllm"], backend=engine)
    run_pairs(configs["hf"])
    vllm = {r["id"]: r for r in read_jsonl(configs["vllm"].out)}
    hf = {r["id"]: r for r in read_jsonl(configs["hf"].out)}
    assert vllm.keys() == hf.keys() and len(hf) == 8
    same = 0
    for key, theirs in hf.items():
        ours = vllm[key]
        assert ours.keys() == theirs.keys()
        assert {k: v for k, v in ours.items() if k not in GENERATED} == {
            k: v for k, v in theirs.items() if k not in GENERATED
        }
        for side in ("chosen", "rejected"):
            assert ours[f"{side}_finish"] in ("stop", "length")
            if ours[side] == theirs[side]:
                same += 1
                assert ours[f"{side}_finish"] == theirs[f"{side}_finish"]
    record("pairs, greedy chosen + rejected answers", same, 2 * len(hf))
    assert same >= 0.75 * 2 * len(hf)


def _sampled(model, images, out, batch_size):
    return PairsConfig(
        model=model,
        images=str(images),
        out=str(out),
        backend="vllm",
        batch_size=batch_size,
        max_new_tokens=32,
        temperature=0.8,
    )


def test_sampled_answers_do_not_depend_on_batching(engine, demo_model, unlabeled, tmp_path):
    """Each request has its own seed from (seed, image id, answer): any batch size, any order."""
    a = _sampled(demo_model, unlabeled, tmp_path / "b8.jsonl", 8)
    b = _sampled(demo_model, unlabeled, tmp_path / "b3.jsonl", 3)
    run_pairs(a, backend=engine)
    run_pairs(b, backend=engine)
    assert sorted(read_jsonl(a.out), key=lambda r: r["id"]) == sorted(
        read_jsonl(b.out), key=lambda r: r["id"]
    )
    other_seed = dataclasses.replace(a, out=str(tmp_path / "seed.jsonl"), seed=7)
    run_pairs(other_seed, backend=engine)
    assert read_jsonl(other_seed.out) != read_jsonl(a.out)


class PerKind:
    """The engine, asked as a backend without caches by image is: one call per answer kind."""

    caches_by_image = False

    def __init__(self, backend):
        self.backend = backend

    def generate(self, requests, **kw):
        return self.backend.generate(requests, **kw)


def test_pairs_group_requests_by_image_in_one_call_and_make_the_same_records(
    engine, demo_model, unlabeled, tmp_path
):
    """One call per batch, each clean image's two requests adjacent (so vLLM's encoder and
    prefix caches can serve the second): the same sampled records as one call per kind."""
    assert engine.caches["prefix_caching"] is True and engine.caches_by_image
    grouped = _sampled(demo_model, unlabeled, tmp_path / "grouped.jsonl", 3)
    per_kind = _sampled(demo_model, unlabeled, tmp_path / "per_kind.jsonl", 3)
    summary = run_pairs(grouped, backend=engine)
    old = run_pairs(per_kind, backend=PerKind(engine))
    assert summary.details["generate_calls"] == 3  # 8 images in batches of 3
    assert summary.details["requests_grouped_by_image"] is True
    assert old.details["generate_calls"] == 6
    assert read_manifest(grouped.out)["summary"]["details"]["generate_calls"] == 3
    assert read_jsonl(grouped.out) == read_jsonl(per_kind.out)


class Killed(BaseException):
    """Stands for a kill (not an Exception, so nothing on the way catches it)."""


class KilledAfter:
    """The engine, killed at its ``calls``-th generate call."""

    def __init__(self, backend, calls: int):
        self.backend, self.calls = backend, calls
        self.caches_by_image = backend.caches_by_image  # the same request order as the engine's

    def generate(self, requests, **kw):
        self.calls -= 1
        if self.calls == 0:
            raise Killed
        return self.backend.generate(requests, **kw)


def test_a_killed_run_resumes_to_the_records_of_an_unbroken_one(
    engine, demo_model, unlabeled, tmp_path
):
    whole = _sampled(demo_model, unlabeled, tmp_path / "whole.jsonl", 3)
    run_pairs(whole, backend=engine)
    broken = _sampled(demo_model, unlabeled, tmp_path / "broken.jsonl", 3)
    with pytest.raises(Killed):  # the second batch's one call: one batch appended
        run_pairs(broken, backend=KilledAfter(engine, 2))
    assert len(read_jsonl(broken.out)) == 3
    assert read_manifest(broken.out)["status"] == "running"
    with open(broken.out, "a") as f:  # and a torn line, as a kill mid-append leaves
        f.write('{"id": "torn')
    summary = run_pairs(broken, backend=engine)
    assert summary.already_done == 3 and summary.made == 5
    assert read_jsonl(broken.out) == read_jsonl(whole.out)
    assert read_manifest(broken.out)["status"] == "complete"


def test_an_adapter_applies_and_agrees_with_hf(engine, demo_model, eval_files, adapter, tmp_path):
    adapted = engine.with_adapter(adapter)
    run_eval(_eval(demo_model, eval_files, tmp_path / "base.json", "vllm"), backend=engine)
    run_eval(
        _eval(demo_model, eval_files, tmp_path / "lora.json", "vllm", adapter=adapter),
        backend=adapted,
    )
    run_eval(_eval(demo_model, eval_files, tmp_path / "hf_lora.json", "hf", adapter=adapter))
    base = _predictions(tmp_path / "base.json")
    lora = _predictions(tmp_path / "lora.json")
    hf_lora = _predictions(tmp_path / "hf_lora.json")
    changed = sum(base[k] != lora[k] for k in base)
    record("eval answers changed by the adapter (vLLM)", changed, len(base))
    assert changed >= 0.5 * len(base)
    same = sum(lora[k] == hf_lora[k] for k in hf_lora)
    record("eval, greedy answers with the adapter", same, len(hf_lora))
    assert same >= 0.9 * len(hf_lora)
    # The base engine is unchanged by the adapter's calls.
    run_eval(_eval(demo_model, eval_files, tmp_path / "base2.json", "vllm"), backend=engine)
    assert _predictions(tmp_path / "base2.json") == base


def test_infuse_with_the_stage1_adapter(engine, demo_model, eval_files, adapter, tmp_path):
    names = sorted(p.name for p in eval_files["images"].iterdir())[:5]
    samples = [
        {
            "id": f"s{i}",
            "image": name,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the image?"},
                {"from": "gpt", "value": "Shapes."},
            ],
        }
        for i, name in enumerate(names)
    ]
    data = tmp_path / "instruct.json"
    data.write_text(json.dumps(samples))
    config = InfuseConfig(
        model=demo_model,
        data=str(data),
        images=str(eval_files["images"]),
        out=str(tmp_path / "infused.json"),
        adapter=adapter,
        backend="vllm",
        max_new_tokens=32,
    )
    summary = run_infuse(config, backend=engine.with_adapter(adapter))
    assert summary.details["infused"] == 5
    made = {r["id"]: r for r in read_jsonl(Path(config.out + ".partial.jsonl"))}
    for sample in json.loads(Path(config.out).read_text()):
        description = made[sample["id"]]["description"]
        assert sample["stic_infusion"]["description"] == description
        assert made[sample["id"]]["finish"] in ("stop", "length")
        assert sample["conversations"][0]["value"] == (
            f"<image>\nImage description:\n{description}\n\nWhat is in the image?"
        )


def test_families_vllm_cannot_serve_are_refused_with_the_reason(tmp_path):
    for arch, why in (
        ("NoSuchModelForConditionalGeneration", "no implementation"),
        ("LlamaForCausalLM", "text-only"),
    ):
        folder = tmp_path / arch
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"architectures": [arch]}))
        assert why in vllm_refusal(folder, with_adapter=False)
        from stic.modeling.backends import open_vllm_engine

        with pytest.raises(BackendError, match="use --backend hf"):
            open_vllm_engine(str(folder))


def test_command_line_pairs_and_eval_with_vllm(demo_model, unlabeled, eval_files, tmp_path):
    """`stic pairs|eval --backend vllm` end to end, each starting its own engine."""
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    stic = [sys.executable, "-m", "stic"]
    pairs = tmp_path / "pairs.jsonl"
    subprocess.run(
        [*stic, "pairs", "--model", demo_model, "--images", str(unlabeled), "--out", str(pairs)]
        + ["--backend", "vllm", "--max-new-tokens", "24", "--limit", "4"],
        check=True,
        env=env,
    )
    rows = read_jsonl(pairs)
    assert len(rows) == 4 and all(r["chosen"] and r["rejected"] for r in rows)
    assert read_manifest(pairs)["config"]["backend"] == "vllm"
    out = tmp_path / "eval.json"
    subprocess.run(
        [*stic, "eval", "--model", demo_model, "--data", str(eval_files["vqa"])]
        + ["--images", str(eval_files["images"]), "--out", str(out), "--backend", "vllm"]
        + ["--limit", "10"],
        check=True,
        env=env,
    )
    assert json.loads(out.read_text())["n"] == 10
