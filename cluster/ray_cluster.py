"""Connecting to Ray: an embedded local instance by default, or a running cluster by address."""

from __future__ import annotations

import logging
import os


def connect(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = True) -> str:
    """Start or attach to Ray and return a short description of where we are running.

    ``address`` (or ``RAY_ADDRESS``) attaches to a running cluster; without either, Ray starts
    in-process on this machine. Calling it again in the same process reuses the session.
    """
    if quiet:
        # Must be set before ray.data is first imported.
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", os.path.join(os.path.dirname(__file__), "ray_data_logging.yaml"))
    import ray
    import ray.data
    from ray.util.debug import log_once

    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        kwargs: dict = {"include_dashboard": False, "log_to_driver": True}
        if quiet:
            kwargs["logging_level"] = logging.WARNING
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    if quiet:
        log_once("ray_data_progress_manager_disabled")  # we disable the bars on purpose: no warning
    ctx = ray.data.DataContext.get_current()
    # Our own progress line replaces Ray's bars, which flood non-interactive logs.
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    res = ray.cluster_resources()
    where = address or "embedded local Ray"
    return f"{where} ({int(res.get('CPU', 0))} CPU, {int(res.get('GPU', 0))} GPU)"
