"""Options shared by several commands: the engine (local or Ray) and its settings."""

from __future__ import annotations

import functools
from typing import Any

import click

from compatret.core.errors import CompatretError

ENGINE_SETTINGS = ("engine", "ray_address", "workers", "num_gpus_per_worker", "step_rows")


def engine_options(fn: Any) -> Any:
    """--engine local|ray and the Ray settings, shared by `index add` and `index backfill`; the
    command receives them as one `engine` dict (see ray_options)."""

    @functools.wraps(fn)
    def with_engine(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, engine={k: kwargs.pop(k) for k in ENGINE_SETTINGS}, **kwargs)

    for option in reversed(
        [
            click.option(
                "--engine",
                type=click.Choice(["local", "ray"]),
                default="local",
                show_default=True,
                help="ray: Ray workers encode (--items) or normalise (--vectors) rows and write Lance fragments; this process commits them once per step.",
            ),
            click.option("--ray-address", help="A running Ray cluster (default: $RAY_ADDRESS, else a local one is started)."),
            click.option("--workers", type=int, default=2, show_default=True, help="Ray encoding actors."),
            click.option("--num-gpus-per-worker", type=float, default=0.0, show_default=True),
            click.option("--step-rows", type=int, default=50_000, show_default=True, help="Rows per commit with --engine ray."),
        ]
    ):
        with_engine = option(with_engine)
    return with_engine


def ray_options(engine: dict[str, Any], batch_size: int) -> Any:
    """RayOptions from the --engine settings (None for the local engine)."""
    from compatret.engine.ray_cluster import RayOptions

    if engine["workers"] < 1 or engine["num_gpus_per_worker"] < 0 or engine["step_rows"] < 1:
        raise CompatretError("--workers and --step-rows must be >= 1, --num-gpus-per-worker >= 0")
    if engine["engine"] != "ray":
        return None
    return RayOptions(engine["ray_address"], engine["workers"], batch_size, engine["num_gpus_per_worker"], engine["step_rows"])
