"""The tiny GRM: built by `tribunal train sft` from a local tokenizer and random init, loads
offline, renders chats, generates, builds deterministically; the committed copy is that build."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tribunal.jobs.grm.protocol import build_messages, load_template, parse_output
from tribunal.training.tiny_model import COMMITTED, MANIFEST_NAME, build_tiny_model, synthetic_examples

TRAIN_STEPS = 3  # enough to run `tribunal train sft` end to end; format quality needs the default 300


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build through the trainer, and two of the untrained start (tokenizer + random init):
    the trainer's own runs are bit-identical for the same seed (test_trainer's resume tests)."""
    trained = build_tiny_model(tmp_path_factory.mktemp("tiny_a"), seed=3, train_steps=TRAIN_STEPS, log=None)
    starts = [build_tiny_model(tmp_path_factory.mktemp(f"tiny_{x}"), seed=3, train_steps=0, log=None) for x in "bc"]
    return trained, starts


def test_importing_does_not_import_torch():
    code = "import sys, tribunal.training.tiny_model; print(sorted({'torch', 'transformers', 'tokenizers'} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"


def test_manifest_and_files(built):
    path, _ = built
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    assert manifest["seed"] == 3
    assert manifest["train_steps"] == TRAIN_STEPS
    assert manifest["final_loss"] is not None and manifest["final_loss"] > 0
    assert manifest["trainer"].startswith("tribunal train sft")
    assert (manifest["template"], manifest["template_single"]) == ("default", "default")  # what the jobs default to
    assert manifest["num_parameters"] > 0
    assert (path / "model.safetensors").exists()
    assert (path / "tokenizer.json").exists()
    # Spelled so that transformers 4.x (which vLLM releases may pin) loads it too.
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert json.loads((path / "config.json").read_text())["rope_theta"] == 10000.0


def test_loads_offline_and_generates(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = built
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert model.config.head_dim == 64
    assert model.config.max_position_embeddings >= 4096
    # The trainer's export stores a tied output embedding once, and it loads tied.
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert model.config.tie_word_embeddings and "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None

    messages = build_messages(
        load_template("default"), [{"role": "user", "content": "What is 2 + 2?"}], ["2 + 2 = 4.", "It is 5."]
    )
    user = messages[0]["content"]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
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

    _, (a, b) = built
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].equal(wb[name]), name
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_synthetic_completions_follow_the_format():
    examples = synthetic_examples(300, seed=0)
    assert {ex.template for ex in examples} == {"default", "single"}
    assert {ex.n for ex in examples} == {1, 2, 3, 4}
    for ex in examples:
        lines = ex.completion.split("\n")
        assert [line.split(":")[0] for line in lines] == ["Specific Criteria", "Analysis", "Scores"]
        result = parse_output(ex.completion, ex.n, load_template(ex.template))
        assert result.error is None, (result, ex.completion)
        if ex.template == "default":
            assert f"[The Begin of Response {ex.n}]" in ex.prompt
            assert f"[The Begin of Response {ex.n + 1}]" not in ex.prompt
        else:
            assert ex.n == 1 and "[The Begin of Response]" in ex.prompt
        if "The best response is: Response " in ex.prompt:
            hinted = int(ex.prompt.rsplit(" ", 1)[1]) - 1
            assert all(s < result.scores[hinted] for i, s in enumerate(result.scores) if i != hinted)


def test_the_committed_model_is_the_default_build_and_writes_the_format():
    """The copy the tests and `make demo-tiny` use: built with the defaults, through the trainer,
    and (sampled at temperature 1) mostly parseable on two-response prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = json.loads((COMMITTED / MANIFEST_NAME).read_text())
    assert (manifest["seed"], manifest["train_steps"], manifest["num_layers"]) == (0, 300, 2)
    assert manifest["trainer"].startswith("tribunal train sft")
    tokenizer = AutoTokenizer.from_pretrained(COMMITTED, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(COMMITTED, local_files_only=True, dtype=torch.float32)
    examples = [ex for ex in synthetic_examples(400, seed=77) if ex.template == "default" and ex.n == 2][:16]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": ex.prompt}], tokenize=False, add_generation_prompt=True)
               for ex in examples]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=None, top_p=None, max_new_tokens=80,
                             pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    parsed = sum(parse_output(t, 2, load_template("default")).ok for t in texts)
    assert parsed >= 11, texts  # 14 of 16 when committed (the old loop's build: 13); a random-init model parses none
