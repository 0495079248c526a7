"""One DeepSpeed trainer for the GRM SFT and meta-RM recipes (``training/sft.py``, ``training/metarm.py``).

``train(cfg, task)`` is the training function: it runs in every rank, under ``torchrun``, the
``deepspeed`` launcher or Ray Train's ``TorchTrainer`` (all of them set ``RANK``/``WORLD_SIZE``/
``MASTER_ADDR``), unchanged. On CPU the process group is gloo. It is the loop at the end of this
module, over a ``Trainer`` shaped after torchtune's recipe interface:

- ``setup``: the process group, ``training.data.ShardedReader`` (exactly once per epoch, the same
  steps on every rank), the model (the task loads a causal LM or a one-logit classifier) and the
  DeepSpeed engine;
- ``resume``: ``OUT/checkpoints/`` (DeepSpeed's own) holds the data position in its client state
  (``consumed_samples``, epoch, seed, corpus hash): a re-run of the same command after a kill goes
  on exactly where the last checkpoint was taken; a checkpoint of another run is refused;
- ``step``: one optimizer step, its loss normalised by a count summed over every rank and
  micro-batch of the step; ``log_progress``: a progress line (with the meta-RM's held-out metrics
  when they are computed) and one JSON line in ``OUT/train_log.jsonl`` every ``--log-every`` steps;
- ``save_checkpoint``: every ``--save-every`` steps and at the end;
- ``finish``: ``OUT/train_summary.json`` and the export ``OUT/model/`` in Hugging Face format
  (safetensors, tokenizer, chat template, generation config, ``tribunal_model.json``), gathered
  from any ZeRO stage, loadable as ``--model`` / ``--meta-rm``.

``tribunal train sft|metarm ...`` (``training/launch.py``) checks what it can on the driver, then
launches ``torchrun --nproc-per-node N`` on this machine.

Run::

    tribunal train sft --data rft_run/sft --model BASE --output ckpt/grm --deepspeed zero3
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tribunal.jobs.pipeline.config import check, opt, to_dict
from tribunal.schemas.errors import TribunalError

CONFIGS = Path(__file__).resolve().parent / "configs"
TASKS = ("sft", "metarm")
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
CHECKPOINTS = "checkpoints"
EXPORT = "model"
# What a checkpoint must share with this run to be resumed (its client state holds them).
MUST_MATCH = ("seed", "corpus_hash", "global_batch", "task", "bucket_window")
# Options of one task only: `tribunal train TASK --help` shows its own; a config giving another's is refused.
TASK_ONLY = {"sft": ("template",), "metarm": ("holdout", "eval_every", "pos_weight")}


@dataclass(frozen=True)
class TrainConfig:
    """A training run (SFT or meta-RM) over a corpus that ``rft``/``rft-filter`` wrote."""

    data: str = opt("", "corpus directory: committed part-*.parquet files (local or s3://), e.g. rft_run/sft")
    model: str = opt("", "base model directory (Hugging Face format)")
    output: str = opt("", "run directory: checkpoints/, model/ (the export), train_log.jsonl, train_summary.json, logs/")
    deepspeed: str = opt("zero0", "DeepSpeed JSON config: a file, or a shipped one: zero0, zero1, zero2, zero3, zero2_offload, "
                                  "zero3_offload ('auto' values are filled from these options)")
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
    template: str | None = opt(None, "GRM template the corpus's prompts were rendered with, recorded in the export's tribunal_model.json "
                                     "for the jobs (default: the corpus's _manifest.json, else the base model's record, else default)")
    holdout: float = opt(0.0, "fraction of rows held out for evaluation (accuracy, ROC-AUC, BCE)")
    eval_every: int | None = opt(None, "optimizer steps between held-out evaluations, a multiple of --log-every (default: every log line; 0: only at the end)")
    pos_weight: float | None = opt(None, "BCE weight of positive labels (for unbalanced corpora)")
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


def check_task(cfg: TrainConfig, task_name: str) -> None:
    """``task_name`` is a task, and ``cfg`` sets no option of the other task (a YAML can hold any key)."""
    if task_name not in TASKS:
        raise TribunalError(f"task must be one of {TASKS}, got {task_name!r}")
    if task_name == "sft" and cfg.holdout:
        raise TribunalError("--holdout is for the meta-RM (train metarm); SFT reports no held-out metrics")
    for other, keys in TASK_ONLY.items():
        for key in keys:
            if other != task_name and getattr(cfg, key) not in (None, 0, 0.0):
                raise TribunalError(f"--{key.replace('_', '-')} is for train {other}, not train {task_name}")


def task_class(task_name: str):
    """The task's model, batches and loss: ``SftTask`` or ``MetaRmTask`` (both light to import)."""
    if task_name == "sft":
        from tribunal.training.sft import SftTask

        return SftTask
    from tribunal.training.metarm import MetaRmTask

    return MetaRmTask


def deepspeed_path(name_or_path: str) -> Path:
    """A shipped config by name (``zero3``) or a JSON file."""
    shipped = CONFIGS / f"{name_or_path}.json"
    return shipped if "/" not in name_or_path and shipped.is_file() else Path(name_or_path)


def deepspeed_config(cfg: TrainConfig, world: int) -> dict[str, Any]:
    """The JSON config with its ``auto`` values filled from ``cfg``."""
    path = deepspeed_path(cfg.deepspeed)
    try:
        with open(path, encoding="utf-8") as fh:
            ds = json.load(fh)
    except OSError as e:
        shipped = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.json")))
        raise TribunalError(f"cannot read DeepSpeed config {cfg.deepspeed}: {e.strerror} (shipped: {shipped})") from None
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


def held_out_text(metrics: dict[str, Any]) -> str:
    """The meta-RM's held-out metrics for a console line."""
    auc = metrics.get("eval_roc_auc")
    return (f"held-out accuracy {metrics['eval_accuracy']:.3f} roc_auc {'n/a' if auc is None else f'{auc:.3f}'} "
            f"bce {metrics['eval_bce']:.4f} ({metrics['eval_rows']} rows)")


class Logger:
    """Rank 0's progress lines (stderr, and ``console`` when the rank's own output goes to a log
    file) and its JSONL log; other ranks' calls do nothing."""

    def __init__(self, out: Path, rank: int, job: str, console=None) -> None:
        self.rank, self.job, self.console = rank, job, console
        self.file = open(out / LOG_FILE, "a", encoding="utf-8") if rank == 0 else None

    def __call__(self, record: dict[str, Any], line: str | None = None) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if line:
            self.say(line)

    def say(self, line: str) -> None:
        if self.file is None:
            return
        text = f"[train {self.job}] {line}"
        print(text, file=sys.stderr, flush=True)
        if self.console is not None:
            print(text, file=self.console, flush=True)


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


@dataclass
class _Window:
    """What the steps since the last log line add up to (global sums over every rank)."""

    loss: float = 0.0
    steps: int = 0
    tokens: int = 0
    examples: int = 0
    t0: float = field(default_factory=time.time)


class Trainer:
    """One rank of a training run, in the shape of torchtune's ``FTRecipeInterface``: ``setup``,
    ``resume``, ``step``, ``save_checkpoint``, ``finish``. ``train`` is the loop that calls them."""

    def __init__(self, cfg: TrainConfig, task_name: str, console=None) -> None:
        check_task(cfg, task_name)
        self.cfg, self.task_name, self.console = cfg, task_name, console
        self.started = time.time()
        self.out = Path(cfg.output)
        self.ckpt_dir = self.out / CHECKPOINTS
        self.consumed, self.epoch = 0, 0  # global samples consumed; the epoch of the last step
        self.counters: dict[str, int] = {}  # this rank's task counters (rows filtered, labels seen ...)
        self.last_eval: tuple[int, dict] | None = None  # (step, metrics) of the latest held-out evaluation
        self.eval_every = cfg.log_every if cfg.eval_every is None else cfg.eval_every
        self.window = _Window()

    # -- setup and resume ------------------------------------------------------------------------
    def setup(self) -> None:
        """Process group, output directory and log, corpus reader, model and DeepSpeed engine."""
        import deepspeed
        import torch

        from tribunal.training.data import Corpus, ShardedReader
        from tribunal.training.model_record import export_record

        cfg = self.cfg
        self.rank, self.world = _init_distributed(cfg)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = Logger(self.out, self.rank, self.task_name, self.console)
        torch.manual_seed(cfg.seed)
        Task = task_class(self.task_name)
        self.corpus = Corpus.open(cfg.data, Task.REQUIRED)
        self.record = export_record(cfg, self.task_name)  # the export's tribunal_model.json (the template)
        self.reader = ShardedReader(self.corpus, self.rank, self.world, cfg.micro_batch, cfg.grad_accum, cfg.seed, cfg.shuffle_window,
                                    holdout=cfg.holdout, log=self._log_dropped, bucket_window=cfg.bucket_window)
        self.task = Task(cfg, self.world)
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.task.model, model_parameters=[p for p in self.task.model.parameters() if p.requires_grad],
            config=deepspeed_config(cfg, self.world), dist_init_required=False,
        )
        self.task.engine = self.engine
        self.dtype = torch.bfloat16 if self.engine.bfloat16_enabled() else torch.float32
        self.total_steps = self.reader.steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)

    def _log_dropped(self, epoch: int, keys: list[str]) -> None:
        self.log({"event": "dropped", "epoch": epoch, "count": len(keys), "keys": keys})

    def _client_state(self) -> dict[str, Any]:
        """What a checkpoint holds besides DeepSpeed's state: the data position, and what must match to resume."""
        return {"consumed_samples": self.consumed, "epoch": self.epoch, "seed": self.cfg.seed, "corpus_hash": self.corpus.digest,
                "global_batch": self.reader.global_batch, "task": self.task_name, "counters": self.counters,
                "bucket_window": self.cfg.bucket_window}

    def resume(self) -> None:
        """Load the latest checkpoint, if there is one, once it is known to be this run's (same
        seed, corpus, global batch, task and bucketing); the data position comes with it."""
        if (self.ckpt_dir / "latest").exists():
            _, client = self.engine.load_checkpoint(str(self.ckpt_dir), load_optimizer_states=True, load_lr_scheduler_states=True)
            if client is None:
                raise TribunalError(f"{self.ckpt_dir}: the latest checkpoint cannot be loaded")
            state = self._client_state()
            for key in MUST_MATCH:
                # bucket_window: a checkpoint from before the option trained without bucketing
                if client.get(key, 0 if key == "bucket_window" else None) != state[key]:
                    raise TribunalError(f"{self.ckpt_dir}: checkpoint has {key}={client.get(key)!r}, this run has {state[key]!r}: use another --output")
            self.consumed = int(client["consumed_samples"])
            self.counters = dict(client.get("counters", {}))
            self.log({"event": "resume", "consumed_samples": self.consumed, "epoch": client.get("epoch"), "step": self.engine.global_steps},
                     f"resumed from {self.ckpt_dir} at step {self.engine.global_steps} ({self.consumed} samples consumed)")
        self.ids_file = open(self.out / f"ids-rank{self.rank}.jsonl", "a", encoding="utf-8") if self.cfg.record_ids else None
        self.engine.train()
        reader = self.reader
        self.epoch = reader.position(self.consumed)[0] if self.consumed < reader.samples_per_epoch * self.cfg.epochs else self.cfg.epochs
        self.window = _Window()

    # -- the steps ---------------------------------------------------------------------------------
    @property
    def global_step(self) -> int:
        return self.engine.global_steps

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): a function of the step alone, so
        a resumed run follows the same curve."""
        cfg = self.cfg
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            import math

            progress = min(1.0, (step - cfg.warmup_steps) / max(1, self.total_steps - 1 - cfg.warmup_steps))
            return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        return cfg.lr

    def prepared_steps(self):
        """(micro-batches, prepared tensors, their counters) per optimizer step, in order from the
        resumed position (read now, not when the prefetch thread starts)."""
        return self._prepare(self.consumed)

    def _prepare(self, start: int):
        group = []
        for mb in self.reader.batches(start, self.cfg.epochs):
            group.append(mb)
            if len(group) == self.cfg.grad_accum:
                local: dict[str, int] = {}
                with self.task.lock:
                    prepared = [self.task.prepare(m.rows, local) for m in group]
                yield group, prepared, local
                group = []

    def step(self, batch) -> None:
        """One optimizer step. Its micro-batches are prepared first, so the normaliser (summed over
        the step's micro-batches and every rank) is known before the first backward."""
        import torch
        import torch.distributed as dist

        micro, prepared, local = batch
        cfg, engine = self.cfg, self.engine
        for k, v in local.items():
            self.counters[k] = self.counters.get(k, 0) + v
        norm = torch.tensor([float(sum(p.norm for p in prepared))], dtype=torch.float64)
        dist.all_reduce(norm)
        norm_value = max(norm.item(), 1.0)
        if cfg.warmup_steps or cfg.lr_schedule != "constant":
            for group in engine.optimizer.param_groups:
                group["lr"] = self.lr_at(engine.global_steps)
        step_loss = 0.0
        for p in prepared:
            loss_sum = self.task.loss_sum(p, self.dtype)
            # DeepSpeed averages gradients over ranks and divides by the accumulation steps:
            # scale back so the gradient is d(sum of losses)/global count.
            engine.backward(loss_sum * (self.world * cfg.grad_accum / norm_value))
            engine.step()
            step_loss += float(loss_sum.detach())
        self.epoch, self.consumed = micro[-1].epoch, micro[-1].consumed_samples
        if self.ids_file is not None:
            from tribunal.training.data import example_keys

            keys = [k for m in micro for k in example_keys(m.rows)]
            self.ids_file.write(json.dumps({"step": engine.global_steps, "epoch": self.epoch, "keys": keys}) + "\n")
            self.ids_file.flush()
        # step_loss: the sum over this rank; the global mean needs every rank's share.
        shares = torch.tensor([step_loss, float(sum(p.tokens for p in prepared)), float(sum(p.examples for p in prepared))], dtype=torch.float64)
        dist.all_reduce(shares)
        w = self.window
        w.loss += shares[0].item() / norm_value
        w.tokens += int(shares[1].item())
        w.examples += int(shares[2].item())
        w.steps += 1

    def log_progress(self) -> None:
        """A progress line and a JSON record for the steps since the last one; the meta-RM's
        held-out evaluation when it is due (every ``--eval-every`` steps and at the last step)."""
        step, w = self.global_step, self.window
        elapsed = max(time.time() - w.t0, 1e-9)
        record = {"event": "train", "step": step, "epoch": self.epoch, "consumed_samples": self.consumed,
                  "loss": w.loss / w.steps, "lr": self.lr_at(step - 1),
                  "tokens_per_s": w.tokens / elapsed, "examples_per_s": w.examples / elapsed,
                  "tokens": w.tokens, "examples": w.examples, "seconds": elapsed}
        line = (f"step {step}/{self.total_steps} epoch {self.epoch} loss {record['loss']:.4f} lr {record['lr']:.2e} "
                f"{record['tokens_per_s']:.0f} tok/s {record['examples_per_s']:.1f} ex/s")
        if self.task.has_eval and self.reader.holdout_rows and (step == self.total_steps or (self.eval_every and step % self.eval_every == 0)):
            self.last_eval = (step, self.task.evaluate(self.reader, self.dtype))
            record.update(self.last_eval[1])
            line += " | " + held_out_text(self.last_eval[1])
        self.log(record, line)
        self.window = _Window()

    def save_checkpoint(self) -> None:
        """DeepSpeed's checkpoint of this step, with the data position in its client state."""
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=f"step{self.engine.global_steps}", client_state=self._client_state())

    # -- the end ---------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Check every rank took the same steps, take the last checkpoint, write the summary (with
        the held-out metrics), export the model; returns the summary."""
        import torch.distributed as dist

        from tribunal.training.model_record import write_record

        # Every rank must have taken the same number of steps (uneven shards must never desync).
        steps = [None] * self.world
        dist.all_gather_object(steps, self.engine.global_steps)
        if len(set(steps)) != 1:
            raise RuntimeError(f"ranks took different numbers of steps: {steps}")
        self.save_checkpoint()
        engine, reader, corpus = self.engine, self.reader, self.corpus
        summary = {
            "task": self.task_name, "steps": engine.global_steps, "consumed_samples": self.consumed, "world": self.world,
            "global_batch": reader.global_batch, "steps_per_epoch": reader.steps_per_epoch,
            "dropped_per_epoch": reader.dropped_per_epoch, "corpus_rows": corpus.rows, "corpus_hash": corpus.digest,
            "counters": _sum_counters(self.counters), "zero_stage": engine.zero_optimization_stage(), "bf16": engine.bfloat16_enabled(),
            "steps_per_rank": steps, "seconds": round(time.time() - self.started, 3), "config": to_dict(self.cfg),
        }
        if self.task.has_eval and reader.holdout_rows:  # the last step's evaluation when the loop made it (same weights)
            last = self.last_eval
            summary["eval"] = last[1] if last and last[0] == engine.global_steps else self.task.evaluate(reader, self.dtype)
        self.task.export(self.out / EXPORT, self.rank)
        reader.close()
        if self.ids_file is not None:
            self.ids_file.close()
        if self.rank == 0:
            write_record(self.out / EXPORT, self.record)
            (self.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
            held_out = f"; {held_out_text(summary['eval'])}" if "eval" in summary else ""
            self.log.say(f"done: {summary['steps']} steps, export {self.out / EXPORT}{held_out}")
        dist.barrier()
        return summary


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


def train(cfg: TrainConfig, task_name: str, console=None) -> dict[str, Any]:
    """The training function: run in every rank; returns the summary (rank 0 writes it).
    ``console``: where rank 0's progress lines also go when its output is a log file."""
    from tribunal.training.data import Prefetch

    trainer = Trainer(cfg, task_name, console)
    trainer.setup()
    trainer.resume()
    # Reading and tokenizing the next steps overlaps this step's compute (a thread, two steps ahead).
    ahead = Prefetch(trainer.prepared_steps(), ahead=2)
    try:
        for batch in ahead:
            if trainer.global_step >= trainer.total_steps:
                break
            trainer.step(batch)
            step = trainer.global_step
            if step % cfg.log_every == 0 or step == trainer.total_steps:
                trainer.log_progress()
            if step % cfg.save_every == 0 and step < trainer.total_steps:
                trainer.save_checkpoint()
    finally:
        ahead.close()
    return trainer.finish()


if __name__ == "__main__":  # the rank entry of older launch lines (`deepspeed --module tribunal.training.trainer`)
    from tribunal.training.launch import rank_entry

    rank_entry()
