"""One DeepSpeed trainer for the GRM SFT and meta-RM recipes (``training/sft.py``, ``training/metarm.py``).

``train(cfg, task)`` is the training function: it runs in every rank, under ``torchrun``, the
``deepspeed`` launcher or Ray Train's ``TorchTrainer`` (all of them set ``RANK``/``WORLD_SIZE``/
``MASTER_ADDR``), unchanged. On CPU the process group is gloo.

- data: ``training.data.ShardedReader`` (exactly once per epoch, the same steps on every rank);
- model: the task loads it (causal LM or one-logit classifier) and turns micro-batches into a loss
  whose gradient is normalised by a count summed over every rank and micro-batch of the step;
- checkpoints: ``OUT/checkpoints/`` (DeepSpeed's own, every ``--save-every`` steps and at the end)
  with the data position in the client state (``consumed_samples``, epoch, seed, corpus hash): a
  re-run of the same command after a kill resumes exactly where the last checkpoint was taken;
- export: ``OUT/model/`` in Hugging Face format (safetensors, tokenizer, chat template, generation
  config), gathered from any ZeRO stage, loadable as ``--model`` / ``--meta-rm``;
- logging: a progress line and one JSON line in ``OUT/train_log.jsonl`` every ``--log-every``
  steps; ``OUT/train_summary.json`` at the end.

``tribunal train sft|metarm ...`` launches ``torchrun --nproc-per-node N`` on this machine.

Run::

    tribunal train sft --data rft_run/sft --model BASE --output ckpt/grm --deepspeed training/configs/zero3.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tribunal.jobs.pipeline.config import add_arguments, check, load_config, opt, to_dict
from tribunal.schemas.errors import TribunalError

CONFIGS = Path(__file__).resolve().parent / "configs"
TASKS = ("sft", "metarm")
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
CHECKPOINTS = "checkpoints"
EXPORT = "model"


@dataclass(frozen=True)
class TrainConfig:
    """A training run (SFT or meta-RM) over a corpus that ``rft``/``rft-filter`` wrote."""

    data: str = opt("", "corpus directory: committed part-*.parquet files (local or s3://), e.g. rft_run/sft")
    model: str = opt("", "base model directory (Hugging Face format)")
    output: str = opt("", "run directory: checkpoints/, model/ (the export), train_log.jsonl, train_summary.json")
    deepspeed: str = opt(str(CONFIGS / "zero0.json"), "DeepSpeed JSON config ('auto' values are filled from these options)")
    micro_batch: int = opt(2, "examples per rank per micro-batch")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    epochs: int = opt(1, "passes over the corpus")
    max_steps: int | None = opt(None, "stop after this many optimizer steps in total (default: the epochs' steps)")
    lr: float = opt(1e-5, "peak learning rate (constant after warm-up)")
    warmup_steps: int = opt(0, "linear learning-rate warm-up, in optimizer steps")
    lr_schedule: str = opt("constant", "after the warm-up: constant, or cosine (down to 10%% of --lr at the last step)", choices=("constant", "cosine"))
    seed: int = opt(0, "seed of the data order and of model initialisation pieces")
    max_len: int = opt(2048, "tokens per example: SFT rows over it are filtered and counted; meta-RM inputs are cut from the left")
    bf16: bool = opt(False, "train in bfloat16 (DeepSpeed bf16 mode)")
    shuffle_window: int = opt(8, "row groups shuffled together (memory: two windows of row groups per rank)")
    bucket_window: int = opt(0, "length bucketing: sort rows by length within windows of this many global batches (0: off; less padding)")
    log_every: int = opt(10, "optimizer steps between log lines")
    save_every: int = opt(100, "optimizer steps between checkpoints (and one at the end)")
    holdout: float = opt(0.0, "meta-RM: fraction of rows held out for evaluation (accuracy, ROC-AUC, BCE)")
    eval_every: int | None = opt(None, "meta-RM: optimizer steps between held-out evaluations, a multiple of --log-every (default: every log line; 0: only at the end)")
    pos_weight: float | None = opt(None, "meta-RM: BCE weight of positive labels (for unbalanced corpora)")
    record_ids: bool = opt(False, "write the example keys of every step to OUT/ids-rank<r>.jsonl (audit: which rows each rank trained on)")
    nproc: int = opt(2, "processes started by `tribunal train` on this machine (torchrun)")
    dist_timeout_s: int = opt(300, "collective timeout in seconds (a hang fails instead of waiting forever)")

    def __post_init__(self) -> None:
        check(bool(self.data), "data", "is required")
        check(bool(self.model), "model", "is required")
        check(bool(self.output), "output", "is required")
        check(self.bucket_window >= 0, "bucket_window", f"must be >= 0, got {self.bucket_window}")
        for key in ("micro_batch", "grad_accum", "epochs", "log_every", "save_every", "nproc", "shuffle_window", "max_len"):
            check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        check(self.eval_every is None or self.eval_every == 0 or (self.eval_every > 0 and self.eval_every % self.log_every == 0),
              "eval_every", f"must be 0 or a positive multiple of --log-every ({self.log_every}), got {self.eval_every}")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be >= 1, got {self.max_steps}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(0.0 <= self.holdout < 1.0, "holdout", f"must be in [0, 1), got {self.holdout}")
        check(self.pos_weight is None or self.pos_weight > 0, "pos_weight", f"must be > 0, got {self.pos_weight}")


def deepspeed_config(cfg: TrainConfig, world: int) -> dict[str, Any]:
    """The JSON config with its ``auto`` values filled from ``cfg``."""
    try:
        with open(cfg.deepspeed, encoding="utf-8") as fh:
            ds = json.load(fh)
    except OSError as e:
        raise TribunalError(f"cannot read DeepSpeed config {cfg.deepspeed}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise TribunalError(f"{cfg.deepspeed}: not JSON ({e})") from None

    def fill(d: dict, key: str, value: Any) -> None:
        if d.get(key, "auto") == "auto":
            d[key] = value

    fill(ds, "train_micro_batch_size_per_gpu", cfg.micro_batch)
    fill(ds, "gradient_accumulation_steps", cfg.grad_accum)
    ds.pop("train_batch_size", None)  # derived: micro x accum x world
    if ds["train_micro_batch_size_per_gpu"] != cfg.micro_batch or ds["gradient_accumulation_steps"] != cfg.grad_accum:
        raise TribunalError(f"{cfg.deepspeed}: batch sizes must be 'auto' (set them with --micro-batch / --grad-accum)")
    ds.setdefault("bf16", {})
    fill(ds["bf16"], "enabled", cfg.bf16)
    opt_params = ds.setdefault("optimizer", {"type": "AdamW", "params": {}}).setdefault("params", {})
    fill(opt_params, "lr", cfg.lr)
    opt_params.setdefault("torch_adam", True)  # no fused Adam to compile on CPU
    return ds


class Logger:
    """Rank 0's progress lines and JSONL log."""

    def __init__(self, out: Path, rank: int, job: str) -> None:
        self.rank, self.job = rank, job
        self.file = open(out / LOG_FILE, "a", encoding="utf-8") if rank == 0 else None

    def __call__(self, record: dict[str, Any], line: str | None = None) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if line:
            print(f"[train {self.job}] {line}", file=sys.stderr, flush=True)


def _skip_inference_comm_op() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op when its communication
    backend starts (g++ and ninja; 40-160 s the first time on a machine, a cached load after). The op
    serves only ``inference_all_reduce`` (tensor-parallel inference), which training never calls:
    marked incompatible, DeepSpeed does not build it and training runs on gloo as before."""
    try:
        import deepspeed.ops
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
        if accelerator.device_name() == "cpu":
            deepspeed.ops.__compatible_ops__[accelerator.get_op_builder("ShareMemCommBuilder").NAME] = False
    except Exception:  # noqa: BLE001 - another DeepSpeed layout: it builds the op, as it always did
        pass


def _init_distributed(cfg: TrainConfig):
    import datetime

    import deepspeed
    import torch.distributed as dist

    _skip_inference_comm_op()  # before the backend starts (here, or inside deepspeed.initialize)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo", timeout=datetime.timedelta(seconds=cfg.dist_timeout_s))
    return dist.get_rank(), dist.get_world_size()


def _latest_checkpoint(ckpt_dir: Path) -> bool:
    return (ckpt_dir / "latest").exists()


def check_task(cfg: TrainConfig, task_name: str) -> None:
    if task_name not in TASKS:
        raise TribunalError(f"task must be one of {TASKS}, got {task_name!r}")
    if task_name == "sft" and cfg.holdout:
        raise TribunalError("--holdout is for the meta-RM (train metarm); SFT reports no held-out metrics")


def train(cfg: TrainConfig, task_name: str) -> dict[str, Any]:
    """The training function: run in every rank; returns the summary (rank 0 writes it)."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from tribunal.training.data import Corpus, ShardedReader

    check_task(cfg, task_name)
    started = time.time()
    rank, world = _init_distributed(cfg)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    log = Logger(out, rank, task_name)
    torch.manual_seed(cfg.seed)

    if task_name == "sft":
        from tribunal.training.sft import SftTask as Task
    else:
        from tribunal.training.metarm import MetaRmTask as Task
    corpus = Corpus.open(cfg.data, Task.REQUIRED)

    def log_dropped(epoch: int, keys: list[str]) -> None:
        log({"event": "dropped", "epoch": epoch, "count": len(keys), "keys": keys})

    reader = ShardedReader(corpus, rank, world, cfg.micro_batch, cfg.grad_accum, cfg.seed, cfg.shuffle_window, holdout=cfg.holdout, log=log_dropped,
                           bucket_window=cfg.bucket_window)
    task = Task(cfg, world)
    ds_config = deepspeed_config(cfg, world)
    engine, _, _, _ = deepspeed.initialize(
        model=task.model, model_parameters=[p for p in task.model.parameters() if p.requires_grad], config=ds_config, dist_init_required=False
    )
    task.engine = engine
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32

    ckpt_dir = out / CHECKPOINTS
    consumed = 0
    counters: dict[str, int] = {}
    if _latest_checkpoint(ckpt_dir):
        _, client = engine.load_checkpoint(str(ckpt_dir), load_optimizer_states=True, load_lr_scheduler_states=True)
        if client is None:
            raise TribunalError(f"{ckpt_dir}: the latest checkpoint cannot be loaded")
        for key, want in (("seed", cfg.seed), ("corpus_hash", corpus.digest), ("global_batch", reader.global_batch), ("task", task_name),
                          ("bucket_window", cfg.bucket_window)):
            if client.get(key, 0 if key == "bucket_window" else None) != want:
                raise TribunalError(
                    f"{ckpt_dir}: checkpoint has {key}={client.get(key)!r}, this run has {want!r}: use another --output"
                )
        consumed = int(client["consumed_samples"])
        counters = dict(client.get("counters", {}))
        log({"event": "resume", "consumed_samples": consumed, "epoch": client.get("epoch"), "step": engine.global_steps},
            f"resumed from {ckpt_dir} at step {engine.global_steps} ({consumed} samples consumed)")

    total_steps = reader.steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    def lr_at(step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): a function of the step alone, so
        a resumed run follows the same curve."""
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            import math

            progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - 1 - cfg.warmup_steps))
            return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        return cfg.lr

    def save(epoch: int) -> None:
        client = {"consumed_samples": consumed, "epoch": epoch, "seed": cfg.seed, "corpus_hash": corpus.digest,
                  "global_batch": reader.global_batch, "task": task_name, "counters": counters, "bucket_window": cfg.bucket_window}
        engine.save_checkpoint(str(ckpt_dir), tag=f"step{engine.global_steps}", client_state=client)

    ids_file = open(out / f"ids-rank{rank}.jsonl", "a", encoding="utf-8") if cfg.record_ids else None
    engine.train()
    eval_every = cfg.log_every if cfg.eval_every is None else cfg.eval_every
    last_eval: tuple[int, dict] | None = None  # (step, metrics) of the latest held-out evaluation
    window = {"loss": 0.0, "steps": 0, "tokens": 0, "examples": 0, "t0": time.time()}
    epoch = reader.position(consumed)[0] if consumed < reader.samples_per_epoch * cfg.epochs else cfg.epochs

    def steps(start: int):
        """(micro-batches, prepared tensors, their counters) per optimizer step, in order."""
        group = []
        for mb in reader.batches(start, cfg.epochs):
            group.append(mb)
            if len(group) == cfg.grad_accum:
                local: dict[str, int] = {}
                with task.lock:
                    prepared = [task.prepare(m.rows, local) for m in group]
                yield group, prepared, local
                group = []

    # Reading and tokenizing the next steps overlaps this step's compute (a thread, two steps ahead).
    ahead = Prefetch(steps(consumed), ahead=2)
    for step_micro, prepared, local in ahead:
        if engine.global_steps >= total_steps:
            break
        for k, v in local.items():
            counters[k] = counters.get(k, 0) + v
        # One optimizer step: batches prepared first, so the normaliser (summed over the step's
        # micro-batches and every rank) is known before the first backward.
        norm = torch.tensor([float(sum(p.norm for p in prepared))], dtype=torch.float64)
        dist.all_reduce(norm)
        norm_value = max(norm.item(), 1.0)
        if cfg.warmup_steps or cfg.lr_schedule != "constant":
            for group in engine.optimizer.param_groups:
                group["lr"] = lr_at(engine.global_steps)
        step_loss = 0.0
        for p in prepared:
            loss_sum = task.loss_sum(p, dtype)
            # DeepSpeed averages gradients over ranks and divides by the accumulation steps:
            # scale back so the gradient is d(sum of losses)/global count.
            engine.backward(loss_sum * (world * cfg.grad_accum / norm_value))
            engine.step()
            step_loss += float(loss_sum.detach())
        epoch, consumed = step_micro[-1].epoch, step_micro[-1].consumed_samples
        if ids_file is not None:
            from tribunal.training.data import example_keys

            keys = [k for m in step_micro for k in example_keys(m.rows)]
            ids_file.write(json.dumps({"step": engine.global_steps, "epoch": epoch, "keys": keys}) + "\n")
            ids_file.flush()
        # step_loss: the sum over this rank; the global mean needs every rank's share.
        shares = torch.tensor([step_loss, float(sum(p.tokens for p in prepared)), float(sum(p.examples for p in prepared))], dtype=torch.float64)
        dist.all_reduce(shares)
        window["loss"] += shares[0].item() / norm_value
        window["tokens"] += int(shares[1].item())
        window["examples"] += int(shares[2].item())
        window["steps"] += 1
        step = engine.global_steps
        if step % cfg.log_every == 0 or step == total_steps:
            elapsed = max(time.time() - window["t0"], 1e-9)
            record = {"event": "train", "step": step, "epoch": epoch, "consumed_samples": consumed,
                      "loss": window["loss"] / window["steps"], "lr": lr_at(step - 1),
                      "tokens_per_s": window["tokens"] / elapsed, "examples_per_s": window["examples"] / elapsed,
                      "tokens": window["tokens"], "examples": window["examples"], "seconds": elapsed}
            if task.has_eval and reader.holdout_rows and (step == total_steps or (eval_every and step % eval_every == 0)):
                last_eval = (step, task.evaluate(reader, dtype))
                record.update(last_eval[1])
            log(record, f"step {step}/{total_steps} epoch {epoch} loss {record['loss']:.4f} lr {record['lr']:.2e} "
                        f"{record['tokens_per_s']:.0f} tok/s {record['examples_per_s']:.1f} ex/s")
            window = {"loss": 0.0, "steps": 0, "tokens": 0, "examples": 0, "t0": time.time()}
        if step % cfg.save_every == 0 and step < total_steps:
            save(epoch)
    ahead.close()
    # Every rank must have taken the same number of steps (uneven shards must never desync).
    steps = [None] * world
    dist.all_gather_object(steps, engine.global_steps)
    if len(set(steps)) != 1:
        raise RuntimeError(f"ranks took different numbers of steps: {steps}")
    save(epoch)
    summary = {
        "task": task_name, "steps": engine.global_steps, "consumed_samples": consumed, "world": world,
        "global_batch": reader.global_batch, "steps_per_epoch": reader.steps_per_epoch,
        "dropped_per_epoch": reader.dropped_per_epoch, "corpus_rows": corpus.rows, "corpus_hash": corpus.digest,
        "counters": _sum_counters(counters), "zero_stage": engine.zero_optimization_stage(), "bf16": engine.bfloat16_enabled(),
        "steps_per_rank": steps, "seconds": round(time.time() - started, 3), "config": to_dict(cfg),
    }
    if task.has_eval and reader.holdout_rows:  # the last step's evaluation when the loop made it (same weights)
        summary["eval"] = last_eval[1] if last_eval and last_eval[0] == engine.global_steps else task.evaluate(reader, dtype)
    task.export(out / EXPORT, rank)
    reader.close()
    if ids_file is not None:
        ids_file.close()
    if rank == 0:
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
        print(f"[train {task_name}] done: {summary['steps']} steps, export {out / EXPORT}", file=sys.stderr, flush=True)
    dist.barrier()
    return summary


class Prefetch:
    """Iterate ``items`` on a background thread, at most ``ahead`` items ahead; errors re-raised in
    the consumer. ``close()`` stops the thread (it may be reading) before the reader is closed."""

    _DONE = object()

    def __init__(self, items, ahead: int) -> None:
        import queue
        import threading

        self._q: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._items = items
        self._thread = threading.Thread(target=self._work, daemon=True, name="tribunal-prefetch")
        self._thread.start()

    def _work(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                self._q.put(item)
            self._q.put(self._DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._q.put(e)

    def __iter__(self):
        while True:
            item = self._q.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        import queue

        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)  # unblock a pending put
            except queue.Empty:
                pass
        self._thread.join()


def _sum_counters(counters: dict[str, int]) -> dict[str, int]:
    """Per-rank counters (e.g. rows filtered for length) summed over every rank."""
    import torch.distributed as dist

    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, dict(counters))
    out: dict[str, int] = {}
    for part in every:
        for k, v in part.items():
            out[k] = out.get(k, 0) + int(v)
    return dict(sorted(out.items()))


def gathered_state_dict(engine) -> dict | None:
    """The full model state dict on rank 0 (None elsewhere), from any ZeRO stage."""
    import torch.distributed as dist

    if engine.zero_optimization_stage() == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()  # gathers every partition (named "16bit": it is the training dtype)
        return sd if dist.get_rank() == 0 else None
    if dist.get_rank() != 0:
        return None
    return {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}


# --- Ray Train: the same training function on the jobs' Ray cluster ------------------------------

def _ray_worker(config: dict) -> None:
    """One Ray Train worker: TorchTrainer has set up the (gloo) process group; ``train`` runs as is."""
    train(TrainConfig(**config["cfg"]), config["task"])


def train_on_ray(cfg: TrainConfig, task: str, address: str | None = None, cpus_per_worker: float = 1.0) -> dict:
    """Run ``train`` under Ray Train's ``TorchTrainer`` with ``cfg.nproc`` workers (CPU, gloo) on the
    Ray cluster the jobs use (``address``; default RAY_ADDRESS, else an embedded local Ray)."""
    import dataclasses

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from tribunal.cluster.ray_cluster import connect

    connect(address)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"cfg": dataclasses.asdict(cfg), "task": task},
        torch_config=TorchConfig(backend="gloo", timeout_s=cfg.dist_timeout_s),
        scaling_config=ScalingConfig(num_workers=cfg.nproc, use_gpu=False, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=f"tribunal-train-{task}", storage_path=str(Path(cfg.output).resolve() / "ray_train")),
    )
    trainer.fit()
    return json.loads((Path(cfg.output) / SUMMARY_FILE).read_text())


# --- worker entry (run by torchrun / the deepspeed launcher in every rank) -------------------------

def add_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with any of the options below (flags win)")
    add_arguments(parser, TrainConfig)


def worker_main(argv: list[str] | None = None) -> int:
    """``python -m tribunal.training.trainer TASK --flags``: one rank of a training run."""
    parser = argparse.ArgumentParser(prog="tribunal.training.trainer")
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    add_cli(parser)
    args = parser.parse_args(argv)
    cfg = load_config(TrainConfig, args, args.config)
    try:
        train(cfg, args.task)
    except TribunalError as e:
        print(f"tribunal train {args.task}: error: {e}", file=sys.stderr)
        return 2
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def launch_command(task: str, argv: list[str], nproc: int) -> list[str]:
    """torchrun on this machine, one process per rank, a free rendezvous port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # torchrun's argparse reads abbreviations even after the module name: a rank's `--nproc N`
    # would be taken as an ambiguous `--nproc-per-node`. Ranks learn the world size from torchrun.
    rank_argv, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rank_argv.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(port),
            "-m", "tribunal.training.trainer", task, *rank_argv]


def main(argv: list[str] | None = None) -> int:
    """``tribunal train sft|metarm --flags``: checks the config, then launches torchrun locally."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="tribunal train", description="train the GRM (sft) or the meta-RM (metarm) with DeepSpeed")
    parser.add_argument("task", choices=TASKS)
    add_cli(parser)
    args = parser.parse_args(argv)
    cfg = load_config(TrainConfig, args, args.config)  # fails here, in one line, before any process starts
    check_task(cfg, args.task)
    from tribunal.training.data import Corpus

    if args.task == "sft":
        from tribunal.training.sft import SftTask as Task
    else:
        from tribunal.training.metarm import MetaRmTask as Task
    Corpus.open(cfg.data, Task.REQUIRED)
    deepspeed_config(cfg, cfg.nproc)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // cfg.nproc)))}
    proc = subprocess.run(launch_command(args.task, argv[1:], cfg.nproc), env=env)
    if proc.returncode:
        raise TribunalError(f"training failed (exit {proc.returncode}); see the lines above")
    return 0


if __name__ == "__main__":
    code = worker_main()
    # A rank leaves without the interpreter's shutdown: a daemon thread still inside C++ (gloo, a
    # tokenizer, the prefetcher's reader) is unwound there with pthread_exit, which aborted a rank
    # whose work was done and saved ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
