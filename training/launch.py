"""``tribunal train sft|metarm``: check on the driver, launch ``torchrun`` here, report in one line.

The driver checks what it can before any process starts, each failure one line and exit 2:
DeepSpeed is installed, the options, the base model directory, the corpus (footers, schema, row
count), the DeepSpeed config and, for SFT, the template the export will record. Then it runs
``torchrun --nproc-per-node N -m tribunal.training.launch TASK ...``; every rank runs
``worker_main`` -> ``trainer.train``.

Output. Each rank's stdout and stderr go to ``OUT/logs/rank<r>.log`` and torchrun's own to
``OUT/logs/torchrun.log`` (appended, one header line per run); rank 0 also sends its progress
lines to the console. In the ranks, third-party notices a healthy run need not show are switched
off with the libraries' own switches (DeepSpeed's accelerator notice, transformers' warnings such
as a classifier's load report, its progress bars); ``--debug`` keeps them all and sends every
rank's output to the console. A rank that fails writes its cause to ``OUT/logs/error-rank<r>.json``;
the driver prints the earliest as its one error line, naming that rank's log, and exits 2 for a
user error (``TribunalError``), 1 otherwise.

``train_on_ray`` runs the same training function under Ray Train's ``TorchTrainer`` on the jobs'
Ray cluster instead.

Run::

    tribunal train sft --data rft_run/sft --model BASE --output ckpt/grm
    tribunal train metarm --data rft_run/metarm --model BASE --output ckpt/metarm --holdout 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tribunal.jobs.pipeline.config import add_arguments, load_config
from tribunal.schemas.errors import TribunalError
from tribunal.training.trainer import SUMMARY_FILE, TASK_ONLY, TASKS, TrainConfig, check_task, deepspeed_config, task_class, train

LOGS = "logs"
RANK_LOGS_ENV = "TRIBUNAL_TRAIN_RANK_LOGS"  # set by the driver: ranks write their output to OUT/logs/
DESCRIPTION = "train the GRM (sft) or the meta-RM (metarm) with DeepSpeed, in --nproc processes on this machine (torchrun)"
TASK_HELP = {
    "sft": "train the GRM: next-token loss on the completions of an SFT corpus (rft's sft/), exported with its template",
    "metarm": "train the meta-RM: a one-logit classifier, BCE on a meta-RM corpus (rft's metarm/), held-out metrics with --holdout",
}


# --- the command line ----------------------------------------------------------------------------

def build_parser(prog: str = "tribunal train", rank: bool = False) -> argparse.ArgumentParser:
    """``TASK --flags``: each task with its own options only (``tribunal train sft --help``)."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    if rank:  # the deepspeed launcher's, before the task (unused: torch.distributed reads LOCAL_RANK)
        parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="task", required=True, metavar="{sft,metarm}", title="tasks")
    for task in TASKS:
        p = sub.add_parser(task, help=TASK_HELP[task], description=TASK_HELP[task])
        p.add_argument("--config", help="YAML file with any of the options below (flags win)")
        p.add_argument("--debug", action="store_true", help="keep third-party warnings and progress bars, and show every rank's output")
        add_arguments(p, TrainConfig, skip=tuple(k for other, keys in TASK_ONLY.items() if other != task for k in keys))
    return parser


def main(argv: list[str] | None = None) -> int:
    """``tribunal train sft|metarm --flags``: the driver's checks, then torchrun; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    where = f"tribunal train {args.task}"
    try:
        cfg = preflight(args)
    except TribunalError as e:
        print(f"{where}: error: {e}", file=sys.stderr)
        return 2
    return launch(cfg, args.task, argv[1:], debug=args.debug)


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (blocked)
        return False


def preflight(args: argparse.Namespace) -> TrainConfig:
    """Everything the driver can check before a process starts; each failure a one-line TribunalError."""
    from tribunal.training.data import Corpus
    from tribunal.training.model_record import check_model_dir, export_record

    if not _importable("deepspeed"):
        raise TribunalError("training needs DeepSpeed: pip install 'tribunal[train]'")
    cfg = load_config(TrainConfig, args, args.config)
    check_task(cfg, args.task)
    check_model_dir(cfg.model)
    Corpus.open(cfg.data, task_class(args.task).REQUIRED)
    deepspeed_config(cfg, cfg.nproc)
    export_record(cfg, args.task)  # SFT: the template resolves, or says why not
    return cfg


# --- torchrun, its output, its failures ----------------------------------------------------------

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
            "-m", "tribunal.training.launch", task, *rank_argv]


def launch(cfg: TrainConfig, task: str, argv: list[str], debug: bool = False) -> int:
    """Run torchrun for ``task``; 0, or the one error line printed and its exit status."""
    logs = Path(cfg.output) / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    for stale in logs.glob("error-rank*.json"):
        stale.unlink()
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // cfg.nproc)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, RANK_LOGS_ENV: "1"}
    cmd = launch_command(task, argv, cfg.nproc)
    if debug:  # every line on the console, as the ranks and torchrun write them
        code = _run(subprocess.Popen(cmd, env=env), None)
    else:
        code = _stream(cmd, env, logs / "torchrun.log", f"[train {task}] ")
    if code == 0:
        return 0
    line, user_error = first_failure(logs, code)
    print(f"tribunal train {task}: error: {line}", file=sys.stderr)
    return 2 if user_error else 1


def _stream(cmd: list[str], env: dict, log_path: Path, prefix: str) -> int:
    """torchrun with its output read here: rank 0's progress lines (``prefix``) go to the console,
    everything else (torchrun's own) to ``log_path``."""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        log.flush()

        def route(line: str) -> None:
            out = sys.stderr if line.startswith(prefix) else log
            out.write(line)
            out.flush()

        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        return _run(proc, route)


def _run(proc: subprocess.Popen, each_line) -> int:
    """Wait for ``proc`` (feeding its lines to ``each_line`` when its output is piped); an
    interrupt or SIGTERM here stops it too (torchrun stops its ranks), then goes on up."""
    try:
        if each_line is not None:
            for line in proc.stdout:
                each_line(line)
        return proc.wait()
    except BaseException:
        import signal

        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise


def first_failure(logs: Path, code: int) -> tuple[str, bool]:
    """The cause the earliest failing rank reported (its line, naming its log) and whether it is a
    user error; a general line naming torchrun's log when no rank reported one (a rank killed)."""
    reports = []
    for path in logs.glob("error-rank*.json"):
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    if not reports:
        return f"training failed (torchrun exit {code}); no rank reported a cause (log: {logs / 'torchrun.log'})", False
    first = min(reports, key=lambda r: (r["time"], r["rank"]))
    where = f" (log: {first['log']})" if first.get("log") else ""
    return f"{first['message']}{where}", bool(first["user_error"])


# --- one rank ----------------------------------------------------------------------------------

def quiet_libraries() -> None:
    """Switch off what a healthy run need not print, with the libraries' own switches: DeepSpeed's
    "Setting accelerator to CPU" warning (the accelerator named up front where there is no CUDA
    device), transformers' warnings (the load report of a classifier's new score head) and its
    progress bars ("Loading weights", "Writing model shards"), Hugging Face Hub's bars."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not (torch.cuda.device_count() > 0 and torch.cuda.is_available()):  # DeepSpeed's own test for CUDA
            os.environ["DS_ACCELERATOR"] = "cpu"
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _to_rank_log(cfg: TrainConfig, rank: int):
    """This process's stdout and stderr (file descriptors 1 and 2: C++ output too) appended to
    ``OUT/logs/rank<r>.log``; returns its path, and rank 0's console (the old stderr)."""
    logs = Path(cfg.output) / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"rank{rank}.log"
    console = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8") if rank == 0 else None
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} rank {rank} of {os.environ.get('WORLD_SIZE', '?')}: {' '.join(sys.argv[1:])}",
          file=sys.stderr, flush=True)
    return str(path), console


def _report_failure(cfg: TrainConfig, rank: int, message: str, user_error: bool, log: str | None) -> None:
    """``OUT/logs/error-rank<r>.json``: what the driver's one error line says."""
    logs = Path(cfg.output) / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    report = {"rank": rank, "time": time.time(), "message": message, "user_error": user_error, "log": log}
    tmp = logs / f".error-rank{rank}.json.tmp"
    tmp.write_text(json.dumps(report), encoding="utf-8")
    os.replace(tmp, logs / f"error-rank{rank}.json")


def worker_main(argv: list[str] | None = None) -> int:
    """``python -m tribunal.training.launch TASK --flags``: one rank of a training run (torchrun's,
    the deepspeed launcher's); returns its exit status."""
    args = build_parser(prog="tribunal.training.launch", rank=True).parse_args(argv)
    cfg = load_config(TrainConfig, args, args.config)
    rank = int(os.environ.get("RANK", "0"))
    by_driver = bool(os.environ.get(RANK_LOGS_ENV))
    log, console = _to_rank_log(cfg, rank) if by_driver and not args.debug else (None, None)
    if not args.debug:
        quiet_libraries()
    try:
        train(cfg, args.task, console=console)
    except Exception as e:  # noqa: BLE001 - the rank's cause, reported to the driver in one line
        user_error = isinstance(e, TribunalError)
        text = str(e).strip()
        first = text.splitlines()[0] if text else ""
        message = first if user_error else f"{type(e).__name__}: {first}"
        if user_error:
            print(f"tribunal train {args.task}: error: {text}", file=sys.stderr)
        else:
            import traceback

            traceback.print_exc()
        if by_driver:
            _report_failure(cfg, rank, message, user_error, log)
        return 2 if user_error else 1
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def rank_entry() -> None:
    code = worker_main()
    # A rank leaves without the interpreter's shutdown: a daemon thread still inside C++ (gloo, a
    # tokenizer, the prefetcher's reader) is unwound there with pthread_exit, which aborted a rank
    # whose work was done and saved ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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

    connect(address, worker_logs=True)  # the step lines are printed by the Ray Train workers
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"cfg": dataclasses.asdict(cfg), "task": task},
        torch_config=TorchConfig(backend="gloo", timeout_s=cfg.dist_timeout_s),
        scaling_config=ScalingConfig(num_workers=cfg.nproc, use_gpu=False, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=f"tribunal-train-{task}", storage_path=str(Path(cfg.output).resolve() / "ray_train")),
    )
    trainer.fit()
    return json.loads((Path(cfg.output) / SUMMARY_FILE).read_text())


if __name__ == "__main__":
    rank_entry()
