"""The ``tribunal`` command. Light at start-up: job modules import Ray, torch and engines lazily."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback

from tribunal.schemas.errors import TribunalError

DEBUG_ENV = "TRIBUNAL_DEBUG"  # cluster.ray_cluster.DEBUG_ENV (not imported here: the CLI starts light)

# command -> (module, config class, one-line description)
COMMANDS = {
    "demo": ("tribunal.jobs.demo", "DemoConfig", "the README demo: the committed toy GRM and meta-RM on held-out samples (sample, meta-RM, vote, eval)"),
    "label": ("tribunal.jobs.label", "LabelConfig", "sample k trajectories per sample, then vote (one command)"),
    "sample": ("tribunal.jobs.sample", "SampleConfig", "draw k GRM trajectories per sample (GPU-heavy part)"),
    "vote": ("tribunal.jobs.vote", "VoteConfig", "k-way voting over trajectory shards (cheap CPU part)"),
    "rft": ("tribunal.jobs.rft", "RftConfig", "RFT corpora: rejective + hinted sampling into SFT and meta-RM corpora"),
    "rft-filter": ("tribunal.jobs.rft_filter", "RftFilterConfig", "rebuild the SFT and meta-RM corpora from trajectories (CPU)"),
    "import": ("tribunal.jobs.import_", "ImportConfig", "public benchmark files (RewardBench, RM-Bench, RMB, JudgeBench, HelpSteer2, verl) to canonical samples"),
    "eval": ("tribunal.jobs.eval", "EvalConfig", "accuracy against labels and its scaling with k: report, JSON, plot (CPU)"),
    "score": ("tribunal.jobs.score", "ScoreConfig", "score policy rollouts: GRM judgments (--mode grm) or RLPR probability rewards (--mode prob)"),
    "filter": ("tribunal.jobs.filter", "FilterConfig", "keep the prompts whose rollouts' rewards spread (std/EMA filter, CPU)"),
    "export": ("tribunal.jobs.export", "ExportConfig", "kept rollouts as verl or OpenRLHF Parquet"),
    "metarm-score": ("tribunal.jobs.metarm_score", "MetaRmScoreConfig", "score trajectories with a meta-RM (adds meta_score; then vote --k-meta)"),
    "compact": ("tribunal.jobs.compact", "CompactConfig", "merge a finished output's committed files into target-size files (idempotent)"),
    "train": ("tribunal.training.launch", None, "train the GRM (train sft) or the meta-RM (train metarm) with DeepSpeed on this machine"),
    "recipe": ("tribunal.training.toy.recipe", None, "recipe toy-grm: train the toy GRM and meta-RM with tribunal's own jobs (SPCT in miniature)"),
    "build-tiny-model": ("tribunal.training.tiny_model", None, "build a small local GRM for tests and demos (no downloads)"),
}


class Parser(argparse.ArgumentParser):
    """argparse with its errors in one line, like every other error: ``tribunal sample: error:
    argument --engine: invalid choice: 'transformer' (choose from ...); did you mean
    'transformers'? (`tribunal sample --help` lists the options)``, instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}{did_you_mean(message)} (`{self.prog} --help` lists the options)\n")

    def unknown(self, rest: list[str]):
        """The error for arguments this (sub)command does not take, with the closest option."""
        import difflib

        options = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        guesses = [g for t in rest if t.startswith("--") for g in difflib.get_close_matches(t.split("=", 1)[0], options, n=1)]
        hint = f"; did you mean {guesses[0]}?" if guesses else ""
        self.exit(2, f"{self.prog}: error: unrecognized arguments: {' '.join(rest)}{hint} (`{self.prog} --help` lists the options)\n")


def did_you_mean(message: str) -> str:
    """``; did you mean 'x'?`` for argparse's ``invalid choice: 'y' (choose from 'x', ...)``."""
    import difflib
    import re

    m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if not m:
        return ""
    choices = re.findall(r"'([^']*)'", m.group(2)) or [c.strip() for c in m.group(2).split(",")]
    close = difflib.get_close_matches(m.group(1), choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tribunal", description="Batch scoring and data generation with generative reward models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and Ray's own output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = {}
    for name, (module, cls, help_text) in COMMANDS.items():
        if cls is None:  # a module with its own argparse main(): hand it the rest of the line
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        p = parser.commands[name] = sub.add_parser(name, help=help_text, description=help_text)
        # SUPPRESS: `tribunal --debug sample` keeps the top-level flag (a subcommand's default would reset it)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and Ray's own output")
        # Every option of the job's typed config is a flag; --config takes them from a YAML file.
        # A recipe's own add_cli hook adds what its config cannot say (rft's --n-rft alias).
        from tribunal.jobs.pipeline.config import add_arguments

        mod = importlib.import_module(module)
        p.add_argument("--config", help="YAML file with any of the options below (flags win)")
        add_arguments(p, getattr(mod, cls))
        if hasattr(mod, "add_cli"):
            mod.add_cli(p)
    return parser


def _run(command: str, args: argparse.Namespace) -> int:
    from tribunal.jobs.pipeline.config import load_config

    global _output
    _output = None  # nothing to tidy until this command names its output
    module, cls_name, _ = COMMANDS[command]
    mod = importlib.import_module(module)
    if cls_name is None:
        return int(mod.main(args.rest) or 0)
    cfg = load_config(getattr(mod, cls_name), args, getattr(args, "config", None))
    _output = getattr(cfg, "output", None) or None
    mod.run(cfg)
    return 0


_output: str | None = None  # the running job's output directory, tidied when it is interrupted


class Terminated(KeyboardInterrupt):
    """SIGTERM on the driver, raised where the main thread is, like Ctrl-C's KeyboardInterrupt."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - the signal handler's signature
    raise Terminated()


def _quiet_threads(args) -> None:  # noqa: ARG001 - threading.excepthook's signature
    """A background thread that dies while the driver stops (Ray Data's metadata prefetch calling
    ``ray.wait`` after ``ray.shutdown``) prints nothing: its failure is the stop itself, and the
    stop's one line must stay the last."""


def _stop_ray() -> None:
    """Stop the Ray this process started or attached to, so its workers write nothing more once
    we have reported the interruption (an embedded Ray dies with it; a cluster keeps running)."""
    import threading

    threading.excepthook = _quiet_threads
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001 - we are leaving anyway
            pass
    if _output:  # files a worker was writing when it was stopped: never visible, now gone too
        try:
            from tribunal.cluster import storage

            storage.clean_temporaries(*storage.resolve(_output))
        except Exception:  # noqa: BLE001 - the next run cleans them
            pass


def root_cause(e: BaseException) -> BaseException:
    """The exception a Ray task or actor raised, out of Ray's wrappers (``RayTaskError``,
    ``UserCodeException``): what went wrong, rather than where it was reported."""
    ray_exceptions = sys.modules.get("ray.exceptions")
    if ray_exceptions is None:  # Ray never imported: nothing of it to unwrap
        return e
    wrappers = (ray_exceptions.RayTaskError, ray_exceptions.UserCodeException)
    seen: set[int] = set()
    while isinstance(e, wrappers) and id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None) if isinstance(e, ray_exceptions.RayTaskError) else None
        inner = inner if isinstance(inner, BaseException) and inner is not e else e.__cause__
        if inner is None:
            break
        e = inner
    return e


def no_space_line(e: OSError) -> str:
    """A full disk: the file being written (the error's own file name; Ray Data replaces it with
    its retry advice when the error crosses from a worker) or else the job's output, and what to
    do (every job resumes where it stopped)."""
    where = e.filename if isinstance(e.filename, str) and not e.filename.startswith("Failed to ") else None
    where = where or _output
    return f"no space left on device writing {where or 'the output'}: free space, then re-run the same command to resume"


def describe(raised: BaseException) -> tuple[str, bool]:
    """One line for the user, and whether the cause is a ``TribunalError`` (a user-facing error,
    exit status 2). An actor whose constructor raised (an engine that could not load) reaches the
    driver as ``ActorDiedError`` holding only the text of the remote traceback: its last line
    names the cause."""
    e = root_cause(raised)
    text = str(e).strip()
    if isinstance(e, TribunalError):  # one line by design; Ray may append its retry notes
        return text.splitlines()[0] if text else "", True
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return no_space_line(e), True
    if "botocore" in sys.modules:  # an S3 failure after the first contact (cluster/storage.py)
        from tribunal.cluster.storage import describe_storage_error

        line = describe_storage_error(e)
        if line:
            return line, True
    data_exceptions = sys.modules.get("ray.data.exceptions")
    timeout_error = getattr(data_exceptions, "ExecutionTimeoutError", None)
    if timeout_error is not None and isinstance(e, timeout_error):
        from tribunal.cluster.pools import NO_PROGRESS_TIMEOUT_ENV

        first = text.splitlines()[0] if text else ""
        return (
            f"the job stalled: {first.rstrip('.')}; an engine may be hung or an actor cannot be placed "
            f"(raise {NO_PROGRESS_TIMEOUT_ENV} if batches are legitimately this slow)"
        ), True
    ray_exceptions = sys.modules.get("ray.exceptions")
    if ray_exceptions is not None and isinstance(e, ray_exceptions.ActorDiedError) and "creation task" in text:
        name, _, msg = text.splitlines()[-1].strip().partition(": ")
        short = name.rsplit(".", 1)[-1]
        if short == TribunalError.__name__:
            return f"{msg} (raised while starting a Ray actor)", True
        return f"{short}: {msg} (raised while starting a Ray actor)", False
    msg = text.splitlines()[0] if text else ""
    where = "" if e is raised else " (raised in a Ray worker)"
    return f"{type(e).__name__}: {msg}{where}", False


def _print_traceback(e: BaseException) -> None:
    """The driver's traceback and, for an error raised in a Ray worker, the worker's own."""
    traceback.print_exception(e, file=sys.stderr)
    remote = getattr(e, "traceback_str", None)
    if remote:
        print(remote, file=sys.stderr)


def run_main(command: str | None, argv: list[str] | None) -> int:
    """Parse, run, and turn user-facing errors into one line and a non-zero exit."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if command is not None:
        argv = [command, *argv]
    parser = build_parser()
    try:
        # Commands with their own argparse (cls None) get the rest of the line untouched.
        args, rest = parser.parse_known_args(argv)
        if rest and COMMANDS[args.command][1] is not None:
            parser.commands[args.command].unknown(rest)  # the command's own error, not tribunal's usage
    except SystemExit as e:  # argparse's one line (Parser.error) or --help: its status, in-process too
        return e.code if isinstance(e.code, int) else 2
    args.rest = rest
    debug = args.debug or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    # Ray's own console output (logs, workers' tracebacks) is off unless --debug: connect() reads
    # this when it starts Ray (cluster/ray_cluster.py), so the job recipes need not pass it along.
    saved_debug = os.environ.get(DEBUG_ENV)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"
    try:
        return _main(args, debug)
    finally:
        if saved_debug is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = saved_debug


def _main(args: argparse.Namespace, debug: bool) -> int:
    # A map stage that fails raises its own exception, not Ray Data's "UDF failed to process a
    # data block" wrapper, so the cause reaches the driver (read at ray.data's import).
    os.environ.setdefault("RAY_DATA_RAISE_ORIGINAL_MAP_EXCEPTION", "1")
    # SIGTERM (a scheduler, `kill`, `ray job stop`) stops the job as Ctrl-C does: one line, exit
    # 143 (128 + 15), what is written stays written, and the same command resumes.
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    ray = sys.modules.get("ray")
    ours = ray is None or not ray.is_initialized()  # a caller's Ray (a notebook, a test) is left up
    try:
        return _run(args.command, args)
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        # Further signals while we stop must not cut the clean-up short.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_ray()
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        print(f"tribunal {args.command}: {what}; re-run the same command to resume", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as raised:  # noqa: BLE001 - one line (the cause), the traceback under --debug
        if debug:
            _print_traceback(raised)
        line, user_error = describe(raised)
        if ours:  # Ray's forwarded worker logs (an actor's traceback, its "[repeated Nx]" digest)
            _stop_ray()  # arrive asynchronously: stopped first, they cannot print after our line
        from tribunal.cluster.redact import scrub

        line = scrub(line)  # an error can quote a URL or a value that holds a credential
        more = "" if debug or user_error else " (re-run with --debug for the traceback)"
        print(f"tribunal {args.command}: error: {line}{more}", file=sys.stderr)
        return 2 if user_error else 1


def main(argv: list[str] | None = None) -> int:
    return run_main(None, argv)


if __name__ == "__main__":
    sys.exit(main())
