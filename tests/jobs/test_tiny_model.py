"""The locally built tiny GRM: loads offline, renders chats, generates, and builds deterministically."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from jobs.tiny_model import MANIFEST_NAME, build_tiny_model, render_default_prompt, synthetic_examples

TRAIN_STEPS = 12  # enough to exercise the training loop; format quality needs the default 300


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    a = build_tiny_model(tmp_path_factory.mktemp("tiny_a"), seed=3, train_steps=TRAIN_STEPS, log=None)
    b = build_tiny_model(tmp_path_factory.mktemp("tiny_b"), seed=3, train_steps=TRAIN_STEPS, log=None)
    return a, b


def test_importing_does_not_import_torch():
    code = "import sys, jobs.tiny_model; print(sorted({'torch', 'transformers', 'tokenizers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_manifest_and_files(built):
    path, _ = built
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    assert manifest["seed"] == 3
    assert manifest["train_steps"] == TRAIN_STEPS
    assert manifest["final_loss"] is not None and manifest["final_loss"] > 0
    assert manifest["num_parameters"] > 0
    assert (path / "model.safetensors").exists()
    assert (path / "tokenizer.json").exists()


def test_loads_offline_and_generates(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = built
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert model.config.head_dim == 64
    assert model.config.max_position_embeddings >= 4096
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None

    user = render_default_prompt("User: What is 2 + 2?", ["2 + 2 = 4.", "It is 5."])
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    no_gen = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert no_gen == "<|im_start|>user\nhi<|im_end|>\n"

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    # Byte-level BPE: any text, including the whole prompt, round-trips.
    assert tokenizer.decode(ids["input_ids"][0]) == prompt
    odd = "naïve ∑ 日本語 \\boxed{3, 7}\ttab"
    assert tokenizer.decode(tokenizer(odd, add_special_tokens=False)["input_ids"]) == odd

    torch.manual_seed(0)
    out = model.generate(
        **ids, do_sample=True, temperature=1.0, max_new_tokens=8, num_return_sequences=2
    )
    assert out.shape[0] == 2 and ids["input_ids"].shape[1] < out.shape[1] <= ids["input_ids"].shape[1] + 8
    assert all(isinstance(tokenizer.decode(row), str) for row in out)


def test_same_seed_same_weights(built):
    from safetensors.torch import load_file

    a, b = built
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].equal(wb[name]), name
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_synthetic_completions_follow_the_format():
    for ex in synthetic_examples(200, seed=0):
        lines = ex.completion.split("\n")
        assert [line.split(":")[0] for line in lines] == ["Specific Criteria", "Analysis", "Scores"]
        boxed = re.fullmatch(r"Scores: \\boxed\{([^}]*)\}", lines[2])
        assert boxed is not None
        scores = [int(s) for s in boxed.group(1).split(", ")]
        assert len(scores) == ex.n
        if "The score is 0 or 1" in ex.prompt:
            assert ex.n == 1 and scores[0] in (0, 1)
        else:
            assert all(1 <= s <= 10 for s in scores)
            assert f"[The Begin of Response {ex.n}]" in ex.prompt
            assert f"[The Begin of Response {ex.n + 1}]" not in ex.prompt
