"""The DeepSpeed trainer, for real: torchrun with 2 processes on CPU (gloo), the tiny model.

Every ZeRO config in training/configs/ is loaded and run; exports are reloaded by transformers and
compared with the weights in DeepSpeed's own checkpoint; resume after SIGKILL reproduces the ids
seen and the final weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tribunal.schemas import arrow
from tribunal.training.trainer import CONFIGS

pytestmark = pytest.mark.slow
SIZES = (7, 6, 8)  # uneven shards: 21 rows


def sft_rows(start: int, n: int) -> list[dict]:
    # a learnable task: the completion repeats the digit the prompt asks for
    return [
        {"id": f"s{i}", "sample_index": 0, "hinted": False, "permutation": [0],
         "messages": [{"role": "user", "content": f"Say the number {i % 5}."}, {"role": "assistant", "content": f"Scores: \\boxed{{{i % 5}}}"}],
         "prompt": [{"role": "user", "content": f"Say the number {i % 5}."}],
         "completion": [{"role": "assistant", "content": f"Scores: \\boxed{{{i % 5}}}"}]}
        for i in range(start, start + n)
    ]


def metarm_rows(start: int, n: int) -> list[dict]:
    # learnable: label 1 iff the assistant turn says "correct"
    return [
        {"id": f"m{i // 2}", "sample_index": i % 2, "hinted": False,
         "messages": [{"role": "user", "content": f"Please score the responses. {i}"}, {"role": "assistant", "content": "correct answer" if i % 2 else "wrong answer"}],
         "label": i % 2}
        for i in range(start, start + n)
    ]


def write_corpus(root: Path, kind: str, sizes=SIZES, row_group=4) -> str:
    rows, schema = (sft_rows, arrow.SFT) if kind == "sft" else (metarm_rows, arrow.METARM)
    root.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, n in enumerate(sizes):
        pq.write_table(pa.Table.from_pylist(rows(start, n), schema=schema), root / f"part-{i:03d}.parquet", row_group_size=row_group)
        start += n
    (root / "_manifest.json").write_text(json.dumps({"rows": start}))
    return str(root)


def train_cmd(task: str, data: str, model: str, out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "tribunal.jobs.cli", "train", task, "--data", data, "--model", model, "--output", str(out),
            "--micro-batch", "2", "--lr", "1e-3", "--log-every", "1", "--dist-timeout-s", "60", *flags]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_train(*args, timeout=300) -> subprocess.CompletedProcess:
    r = subprocess.run(train_cmd(*args), capture_output=True, text=True, timeout=timeout, env=ENV)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def assert_quiet(r: subprocess.CompletedProcess, task: str) -> None:
    """A healthy run's console: tribunal's own lines only (no third-party warnings, load reports,
    progress bars or torchrun output); the ranks' output is in OUT/logs/."""
    for noise in ("[WARNING]", "LOAD REPORT", "Loading weights", "Writing model shards", "it/s]", "\x1b[", "torch.distributed"):
        assert noise not in r.stderr and noise not in r.stdout, (noise, r.stderr[-3000:])
    lines = r.stderr.splitlines()
    assert lines and all(line.startswith(f"[train {task}] ") for line in lines), r.stderr[-3000:]
    assert lines[-1].startswith(f"[train {task}] done: ")


def log_records(out: Path, event: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if r["event"] == event]


def checkpoint_weights(out: Path) -> dict:
    """Full fp32 weights from DeepSpeed's own checkpoint (independent of our export path)."""
    import torch

    ckpt = out / "checkpoints"
    tag = (ckpt / "latest").read_text().strip()
    if list((ckpt / tag).glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)
    return torch.load(ckpt / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]


# bf16 on ZeRO 2 is run by the meta-RM under the deepspeed launcher (test_metarm_bf16_under_the_deepspeed_launcher):
# one launch covers both, the trainer's bf16 path is shared by the two tasks.
@pytest.mark.parametrize(
    "config,bf16",
    # Every config once; bf16 rides on a ZeRO-3 run (the offload one), not a run of its own (CI time).
    [("zero0", False), ("zero1", False), ("zero2", False), ("zero3", False), ("zero2_offload", False), ("zero3_offload", True)],
)
def test_sft_every_zero_config_exports_a_loadable_model(tmp_path, tiny_model, config, bf16):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_corpus(tmp_path / "sft", "sft")
    out = tmp_path / "run"
    r = run_train("sft", data, tiny_model, out, "--deepspeed", str(CONFIGS / f"{config}.json"), "--epochs", "2", *(["--bf16"] if bf16 else []))
    assert_quiet(r, "sft")
    assert (out / "logs" / "rank0.log").exists() and (out / "logs" / "rank1.log").exists()
    summary = json.loads((out / "train_summary.json").read_text())
    # 21 rows, global batch 4: 5 steps per epoch on both ranks, 1 row dropped per epoch
    assert summary["steps"] == 10 and summary["steps_per_rank"] == [10, 10] and summary["dropped_per_epoch"] == 1
    assert summary["zero_stage"] == int(config[4]) and summary["bf16"] is bf16
    dropped = log_records(out, "dropped")
    assert [d["epoch"] for d in dropped] == [0, 1] and all(d["count"] == 1 and len(d["keys"]) == 1 for d in dropped)
    losses = [r["loss"] for r in log_records(out)]
    assert len(losses) == 10 and losses[-1] < losses[0] * 0.5  # a learnable task is learnt
    export = out / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json"):
        assert (export / name).exists(), name
    # the corpus's manifest names no template, the base model's record says default: the export records it
    record = json.loads((export / "tribunal_model.json").read_text())
    assert (record["kind"], record["template"], record["template_single"]) == ("grm", "default", "default")
    tok = AutoTokenizer.from_pretrained(export)
    assert tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    missing = ref.load_state_dict({k: v.float() for k, v in checkpoint_weights(out).items()}, strict=False).missing_keys
    assert all("lm_head" in k or "embed" in k for k in missing), missing  # tied weights only
    ids = tok(tok.apply_chat_template([{"role": "user", "content": "Say the number 3."}], tokenize=False, add_generation_prompt=True), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = model(ids).logits, ref(ids).logits
    # fp32: the export is the trained weights; bf16: the export is the bf16 copy of the fp32 master
    assert torch.allclose(a, b, atol=1e-5 if not bf16 else 0.15), (a - b).abs().max()


def test_metarm_config_pooling_and_held_out_metrics(tmp_path, tiny_model):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tribunal.jobs.engines import EngineConfig, build_engine
    from tribunal.training.metarm import render_text

    data = write_corpus(tmp_path / "metarm", "metarm", sizes=(20, 14, 14))
    out = tmp_path / "run"
    r = run_train("metarm", data, tiny_model, out, "--deepspeed", str(CONFIGS / "zero3.json"), "--epochs", "4", "--lr", "2e-4", "--holdout", "0.25", "--max-len", "48")
    assert_quiet(r, "metarm")
    # the held-out metrics are on the console's log lines too, as in the log
    held_out = [line for line in r.stderr.splitlines() if "held-out accuracy" in line]
    assert len(held_out) == len([rec for rec in log_records(out) if "eval_accuracy" in rec]) + 1  # + the done line
    last = log_records(out)[-1]
    assert f"held-out accuracy {last['eval_accuracy']:.3f}" in held_out[-1] and f"bce {last['eval_bce']:.4f}" in held_out[-1]
    assert "roc_auc" in held_out[-1]
    assert json.loads((out / "model" / "tribunal_model.json").read_text())["kind"] == "meta-rm"
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["architectures"][0].endswith("ForSequenceClassification") and len(config["id2label"]) == 1
    summary = json.loads((out / "train_summary.json").read_text())
    ev = summary["eval"]
    assert ev["eval_rows"] == 12 and 0 < ev["eval_positive_rate"] < 1
    assert ev["eval_accuracy"] >= 0.75 and ev["eval_roc_auc"] >= 0.9  # the task is learnable ...
    assert ev["eval_bce"] < log_records(out)[0]["eval_bce"]  # ... and learnt
    assert summary["counters"]["label_0"] + summary["counters"]["label_1"] == summary["consumed_samples"]
    # pooling: the engine's classify (last real token by attention mask) equals the model's own
    # pad-based pooling, so the pad token is not the template's final token
    tok = AutoTokenizer.from_pretrained(out / "model")
    msgs = [{"role": "user", "content": "Please score the responses. 99"}, {"role": "assistant", "content": "correct answer"}]
    text = render_text(tok, msgs)
    assert tok.pad_token_id != tok(text, add_special_tokens=False)["input_ids"][-1]
    model = AutoModelForSequenceClassification.from_pretrained(out / "model", dtype=torch.float32).eval()
    with torch.no_grad():
        own = torch.sigmoid(model(**tok([text, text + " padded on the right"], add_special_tokens=False, padding=True, return_tensors="pt")).logits[:, 0])
    engine = build_engine(EngineConfig(model=str(out / "model"), task="classify", device="cpu", dtype="float32"))
    got = engine.classify([text, text + " padded on the right"])
    assert abs(got[0] - own[0].item()) < 1e-5 and abs(got[1] - own[1].item()) < 1e-5
    assert got[0] > engine.classify([render_text(tok, [msgs[0], {"role": "assistant", "content": "wrong answer"}])])[0]


def test_metarm_bf16_under_the_deepspeed_launcher(tmp_path, tiny_model):
    """The meta-RM in bf16 on ZeRO 2, started by DeepSpeed's own launcher (what the `deepspeed`
    script runs: deepspeed.launcher.runner -> launch, 2 local processes, --local_rank passed):
    it trains, evaluates, and exports a classifier that loads and matches DeepSpeed's checkpoint.
    (bf16 with ZeRO 3 is run by the SFT matrix; the trainer's bf16 path is shared, the meta-RM's
    own parts are its score head, resized embeddings, evaluation and export, all exercised here.)"""
    import socket

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tribunal.jobs.engines import EngineConfig, build_engine
    from tribunal.training.metarm import render_text

    data = write_corpus(tmp_path / "metarm", "metarm", sizes=(10, 8, 8))
    out = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(port),
           "--module", "tribunal.training.trainer", "metarm", "--data", data, "--model", tiny_model, "--output", str(out),
           "--micro-batch", "2", "--lr", "2e-4", "--log-every", "1", "--dist-timeout-s", "60",
           "--deepspeed", str(CONFIGS / "zero2.json"), "--bf16", "--epochs", "2", "--holdout", "0.25", "--max-len", "48", "--eval-every", "4"]
    # the launcher's rank processes outlive it if it is killed: a timeout kills the whole group
    # An empty extensions directory: training must not JIT-build DeepSpeed's shared-memory
    # inference op (g++ and ninja, 40-160 s on a fresh machine; it serves inference only).
    extensions = tmp_path / "torch_extensions"
    env = {**ENV, "TORCH_EXTENSIONS_DIR": str(extensions)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
    assert proc.returncode == 0, log[-4000:]
    assert not (extensions / "deepspeed_shm_comm").exists() and "shm_comm" not in log, log[-4000:]
    summary = json.loads((out / "train_summary.json").read_text())
    # 26 rows, 6 held out: 20 trained, global batch 4 -> 5 steps per epoch on both ranks
    assert summary["world"] == 2 and summary["bf16"] is True and summary["zero_stage"] == 2
    assert summary["steps"] == 10 and summary["steps_per_rank"] == [10, 10]
    ev = summary["eval"]
    assert ev["eval_rows"] == 6 and 0 < ev["eval_bce"] < 5 and ev["eval_roc_auc"] is not None
    # held out every 4 steps and at the last; the summary's is the last step's, not evaluated again
    records = log_records(out)
    assert [r["step"] for r in records] == list(range(1, 11))
    assert [r["step"] for r in records if "eval_bce" in r] == [4, 8, 10]
    assert {k: records[-1][k] for k in ev} == ev
    losses = [rec["loss"] for rec in records]
    assert len(losses) == 10 and all(0 < x < 5 for x in losses)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and config["architectures"][0].endswith("ForSequenceClassification")
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForSequenceClassification.from_pretrained(out / "model", dtype=torch.float32).eval()
    ref = AutoModelForSequenceClassification.from_pretrained(out / "model", dtype=torch.float32).eval()
    missing = ref.load_state_dict({k: v.float() for k, v in checkpoint_weights(out).items()}, strict=False).missing_keys
    assert all("lm_head" in k or "embed" in k for k in missing), missing
    text = render_text(tok, [{"role": "user", "content": "Please score the responses. 3"}, {"role": "assistant", "content": "correct answer"}])
    enc = tok([text], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        a, b = model(**enc).logits[0, 0], ref(**enc).logits[0, 0]
    assert abs(a - b) < 0.15, (a, b)  # the export is the bf16 copy of the fp32 master weights
    engine = build_engine(EngineConfig(model=str(out / "model"), task="classify", device="cpu", dtype="float32"))
    assert abs(engine.classify([text])[0] - torch.sigmoid(a).item()) < 1e-5


def _last_per_step(path: Path) -> list[tuple[int, tuple]]:
    by_step: dict[int, tuple] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        by_step[r["step"]] = tuple(r["keys"])  # a step redone after a kill: the resumed run's keys
    return sorted(by_step.items())


def _kill_when(cmd: list[str], out: Path, step: int, timeout=300) -> None:
    """Start a run and SIGKILL its whole process group once the log shows ``step``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    deadline = time.time() + timeout
    log = out / "train_log.jsonl"
    try:
        while time.time() < deadline:
            if log.exists() and any(r.get("step", 0) >= step for r in map(json.loads, log.read_text().splitlines())):
                break
            assert proc.poll() is None, f"run ended before step {step}: {proc.stderr.read()[-3000:]}"
            time.sleep(0.02)
        else:
            raise AssertionError("timed out")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_model):
    """An uninterrupted run: 3 epochs of 21 rows, global batch 4 (5 steps/epoch, 1 row dropped)."""
    root = tmp_path_factory.mktemp("baseline")
    data = write_corpus(root / "sft", "sft")
    out = root / "run"
    run_train("sft", data, tiny_model, out, "--epochs", "3", "--record-ids", "--deepspeed", str(CONFIGS / "zero2.json"), *SCHEDULE)
    return data, out


# The resume runs follow a warm-up and cosine decay: a resumed run must land on the same curve.
SCHEDULE = ("--warmup-steps", "2", "--lr-schedule", "cosine")


def test_the_learning_rate_warms_up_then_decays_to_a_tenth(baseline):
    _, out = baseline
    lrs = [r["lr"] for r in log_records(out)]
    assert len(lrs) == 15
    assert lrs[:3] == pytest.approx([5e-4, 1e-3, 1e-3])
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "case,save_every,kill_at",
    [("mid_epoch", 2, 8), ("epoch_boundary", 5, 8), ("partial_last_batch", 3, 11)],
)
def test_resume_after_sigkill_equals_uninterrupted(tmp_path, tiny_model, baseline, case, save_every, kill_at):
    from safetensors.torch import load_file

    data, base = baseline
    out = tmp_path / "run"
    cmd = train_cmd("sft", data, tiny_model, out, "--epochs", "3", "--record-ids", "--deepspeed", str(CONFIGS / "zero2.json"), "--save-every", str(save_every), *SCHEDULE)
    _kill_when(cmd, out, kill_at)
    assert not (out / "train_summary.json").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr[-4000:]
    resumed = log_records(out, "resume")
    assert resumed and resumed[-1]["consumed_samples"] % 4 == 0 and resumed[-1]["step"] % save_every == 0
    if case == "epoch_boundary":
        assert resumed[-1]["consumed_samples"] == 20 * (resumed[-1]["step"] // 5)  # at an epoch's end
    for rank in (0, 1):
        assert _last_per_step(out / f"ids-rank{rank}.jsonl") == _last_per_step(base / f"ids-rank{rank}.jsonl")
    # every id once per epoch except the logged remainder
    a, b = load_file(out / "model" / "model.safetensors"), load_file(base / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_refuses_a_checkpoint_of_another_corpus(tmp_path, tiny_model):
    import re

    out = tmp_path / "run"
    run_train("sft", write_corpus(tmp_path / "a", "sft"), tiny_model, out, "--max-steps", "1")
    r = subprocess.run(train_cmd("sft", write_corpus(tmp_path / "b", "sft", sizes=(7, 6, 9)), tiny_model, out), capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode != 0 and "checkpoint has corpus_hash=" in r.stderr
    # one line, the failing rank's own cause, naming its log; a user error: exit 2; no torchrun traceback
    assert r.returncode == 2 and "Traceback" not in r.stderr and "ChildFailedError" not in r.stderr and r.stdout == ""
    assert r.stderr.count("\n") == 1, r.stderr
    m = re.fullmatch(rf"tribunal train sft: error: {re.escape(str(out))}/checkpoints: checkpoint has corpus_hash='\w+', this run has '\w+': "
                     rf"use another --output \(log: ({re.escape(str(out))}/logs/rank[01]\.log)\)\n", r.stderr)
    assert m, r.stderr
    assert "checkpoint has corpus_hash=" in Path(m.group(1)).read_text()
    assert "ChildFailedError" in (out / "logs" / "torchrun.log").read_text()  # torchrun's report is kept, in its log


def test_debug_shows_the_libraries_output(tmp_path, tiny_model):
    """--debug: every rank's output on the console, third-party warnings and bars included."""
    data = write_corpus(tmp_path / "metarm", "metarm")
    r = run_train("metarm", data, tiny_model, tmp_path / "run", "--nproc", "1", "--max-steps", "1", "--debug")
    out = r.stdout + r.stderr
    assert "LOAD REPORT" in out and "score.weight" in out and "Loading weights" in out and "Writing model shards" in out
    import torch

    if not torch.cuda.is_available():
        assert "Setting accelerator to CPU" in out
    assert "[train metarm] done: 1 steps" in out


def test_bad_corpus_is_one_line_before_any_process(tmp_path, tiny_model):
    data = write_corpus(tmp_path / "m", "metarm")
    r = subprocess.run(train_cmd("sft", str(tmp_path / "nope"), tiny_model, tmp_path / "o"), capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode != 0 and "corpus not found" in r.stderr
    r = subprocess.run(train_cmd("metarm", data, tiny_model, tmp_path / "o2", "--micro-batch", "0"), capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 2 and "config key 'micro_batch'" in r.stderr


def test_same_training_function_under_ray_train(ray_local, tmp_path, tiny_model, baseline):
    """TorchTrainer on the embedded Ray (2 workers, gloo) runs `train` unchanged: same ids, same weights."""
    from safetensors.torch import load_file

    from tribunal.training.launch import train_on_ray
    from tribunal.training.trainer import TrainConfig

    data, base = baseline
    out = tmp_path / "ray_run"
    cfg = TrainConfig(data=data, model=tiny_model, output=str(out), micro_batch=2, lr=1e-3, log_every=1, dist_timeout_s=60,
                      epochs=3, record_ids=True, deepspeed=str(CONFIGS / "zero2.json"), nproc=2, warmup_steps=2, lr_schedule="cosine")
    summary = train_on_ray(cfg, "sft", cpus_per_worker=0.5)
    assert summary["world"] == 2 and summary["steps_per_rank"] == [15, 15]
    for rank in (0, 1):
        assert _last_per_step(out / f"ids-rank{rank}.jsonl") == _last_per_step(base / f"ids-rank{rank}.jsonl")
    a, b = load_file(out / "model" / "model.safetensors"), load_file(base / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch_allclose(a[k], b[k]) for k in a)


def torch_allclose(x, y) -> bool:
    import torch

    return torch.allclose(x, y, atol=1e-6, rtol=1e-5)


def test_coverage_each_id_once_per_epoch_but_the_logged_remainder(baseline):
    """Across both ranks of the uninterrupted run: every corpus row once per epoch, except the
    rows the truncation dropped, which are exactly the ones logged."""
    from collections import Counter

    from tribunal.training.data import example_keys

    data, base = baseline
    every = example_keys(pa.Table.from_pylist(sft_rows(0, sum(SIZES)), schema=arrow.SFT))
    dropped = {d["epoch"]: d["keys"] for d in log_records(base, "dropped")}
    for epoch in range(3):
        seen = [k for rank in (0, 1) for line in (base / f"ids-rank{rank}.jsonl").read_text().splitlines()
                for k in json.loads(line)["keys"] if json.loads(line)["epoch"] == epoch]
        assert len(seen) == 20 and len(dropped[epoch]) == 1
        assert Counter(seen + dropped[epoch]) == Counter(every)


def test_eval_every_is_0_or_a_multiple_of_log_every():
    from tribunal.training.trainer import TrainConfig

    base = {"data": "d", "model": "m", "output": "o", "log_every": 10}
    for ok in (None, 0, 10, 30):
        TrainConfig(**base, eval_every=ok)
    for bad in (5, 15, -10):
        with pytest.raises(ValueError, match="eval_every"):
            TrainConfig(**base, eval_every=bad)
    with pytest.raises(ValueError, match="log_every"):  # checked first, so eval_every's test never divides by 0
        TrainConfig(**{**base, "log_every": 0}, eval_every=10)
