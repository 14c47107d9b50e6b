"""The `compatret` command: index, query and quickstart, with --json for scripts and one-line errors."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import click

# sub-command groups live in their own modules (their heavy imports happen inside the commands)
from compatret.cli.adapt import adapt
from compatret.cli.evaluate import eval_group
from compatret.cli.index import index
from compatret.cli.model import model_group
from compatret.cli.output import friendly, say
from compatret.cli.regression import regression
from compatret.cli.retrieval_eval import retrieval
from compatret.cli.retriever import retriever
from compatret.cli.train import train
from compatret.core.errors import CompatretError
from compatret.core.logs import LEVELS, LOG_ENV, configure_logging

# Hugging Face's per-model "Loading weights" bars say nothing a user needs and bury the one error
# line; compatret's own bars (embedding, training, backfill) are tqdm's and stay. Set it to 0 to see them.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Into a log file, not a terminal: a progress line every 30 s, not ten a second. tqdm reads this
# when it is first imported, so here, before any command imports it.
if not sys.stderr.isatty():
    os.environ.setdefault("TQDM_MININTERVAL", "30")


@click.group()
@click.version_option(package_name="compatret")
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    envvar=LOG_ENV,
    default="warning",
    show_default=True,
    help=f"What compatret logs to stderr (also ${LOG_ENV}); debug adds the traceback of every error.",
)
def main(log_level: str) -> None:
    """compatret: retrieval with backward-compatible embeddings. Upgrade the model, keep the index."""
    os.environ[LOG_ENV] = configure_logging(log_level)  # `serve --workers N` processes read it too


@main.command("serve")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--refresh-seconds", type=float, default=1.0, show_default=True, help="Max age of the query snapshot.")
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    help="Keys, one per line: `read KEY` or `write KEY` (also $COMPATRET_API_KEY = write, $COMPATRET_READ_API_KEY = read).",
)
@click.option(
    "--models-dir", type=click.Path(file_okay=False), help="Folder whose model folders clients may name (by folder name) in `model`."
)
@click.option("--max-body-mb", type=float, default=16.0, show_default=True, help="Largest request body accepted.")
@click.option("--inference-slots", type=int, default=2, show_default=True, help="Query encodings run at once (per worker).")
@click.option("--workers", type=int, default=1, show_default=True, help="Server processes; each holds its own search kernels.")
@click.option(
    "--fingerprint-minutes",
    type=float,
    default=10.0,
    show_default=True,
    help="A serving model behind an endpoint: re-check its fingerprint this often (0: at start only).",
)
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without API keys.")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: a sharded gallery on Ray Serve, one deployment per shard behind the same HTTP API.",
)
@click.option("--ray-address", help="A running Ray cluster (default: $RAY_ADDRESS, else a local one is started).")
@click.option("--replicas", type=int, default=1, show_default=True, help="With --engine ray: replicas per shard.")
@click.option("--cpus-per-replica", type=float, default=1.0, show_default=True, help="With --engine ray.")
@click.option("--gpus-per-replica", type=float, default=0.0, show_default=True, help="With --engine ray.")
@click.option(
    "--shard-deadline", type=float, default=10.0, show_default=True, help="With --engine ray: seconds a shard may take (then a 503)."
)
@friendly
def serve(directory: str, host: str, port: int, workers: int, insecure: bool, **app: Any) -> None:
    """Serve a gallery over HTTP (OpenAPI schema at /docs and /openapi.json)."""
    import uvicorn

    from compatret.server.app import SERVE_CONFIG_ENV
    from compatret.server.auth import ApiKeys, is_loopback

    keys = ApiKeys.load(app["api_key_file"])
    if not keys.enabled and not is_loopback(host) and not insecure:
        raise CompatretError(f"refusing to serve on {host} without API keys: give --api-key-file or $COMPATRET_API_KEY (or --insecure)")
    models_dir = app["models_dir"]
    if models_dir is not None and not Path(models_dir).is_dir():
        raise CompatretError(f"--models-dir {models_dir} is not a folder")
    if app["max_body_mb"] <= 0 or app["inference_slots"] < 1 or workers < 1:
        raise CompatretError("--max-body-mb must be > 0, --inference-slots and --workers >= 1")
    ray_settings = {k: app.pop(k) for k in ("engine", "ray_address", "replicas", "cpus_per_replica", "gpus_per_replica", "shard_deadline")}
    if not (math.isfinite(app["fingerprint_minutes"]) and app["fingerprint_minutes"] >= 0):
        raise CompatretError("--fingerprint-minutes must be >= 0")
    from compatret.encoders.registry import check_endpoint
    from compatret.engine.sharded import open_gallery

    gallery = open_gallery(directory)  # one clear error for a missing gallery, before the server starts
    check_endpoint(gallery.meta.serving_source, "serve")  # a serving model behind an endpoint must still be the one registered
    if ray_settings["engine"] == "ray":
        _serve_on_ray(directory, host, port, keys, app, ray_settings)
        return
    os.environ[SERVE_CONFIG_ENV] = json.dumps(
        {  # what each worker's create_app gets (app_from_env)
            "directory": str(Path(directory).resolve()),
            "refresh_seconds": app["refresh_seconds"],
            "api_key_file": app["api_key_file"],
            "models_dir": models_dir and str(Path(models_dir).resolve()),
            "max_body_bytes": int(app["max_body_mb"] * 2**20),
            "inference_slots": app["inference_slots"],
            "fingerprint_minutes": app["fingerprint_minutes"],
        }
    )
    click.echo(f"serving {directory} on http://{host}:{port}: the console at /, the API at /docs", err=True)
    # uvicorn says when it listens ("Uvicorn running on ..."); no line per request: that would cost the queries time
    uvicorn.run(
        "compatret.server.app:app_from_env", factory=True, workers=workers, host=host, port=port, log_level="info", access_log=False
    )


def _serve_on_ray(directory: str, host: str, port: int, keys: Any, app: dict[str, Any], ray: dict[str, Any]) -> None:
    """`serve --engine ray`: deploy the shards and the ingress on Ray Serve, then wait for Ctrl-C or SIGTERM."""
    import signal
    import threading

    from compatret.engine.ray_cluster import RayOptions, connect
    from compatret.engine.sharded import is_sharded
    from compatret.server.ray_serve import ServeOptions, start

    if not is_sharded(directory):
        raise CompatretError(f"{directory} is not a sharded gallery: --engine ray serves galleries made with `index create --shards N`")
    if ray["replicas"] < 1 or ray["cpus_per_replica"] < 0 or ray["gpus_per_replica"] < 0 or not ray["shard_deadline"] > 0:
        raise CompatretError("--replicas must be >= 1, --cpus/--gpus-per-replica >= 0 and --shard-deadline > 0")
    options = ServeOptions(ray["replicas"], ray["cpus_per_replica"], ray["gpus_per_replica"], ray["shard_deadline"])
    settings = {
        "refresh_seconds": app["refresh_seconds"],
        "keys": keys,
        "models_dir": app["models_dir"] and str(Path(app["models_dir"]).resolve()),
        "max_body_bytes": int(app["max_body_mb"] * 2**20),
        "inference_slots": app["inference_slots"],
        "fingerprint_minutes": app["fingerprint_minutes"],
    }
    connect(RayOptions(address=ray["ray_address"]))
    url = start(str(Path(directory).resolve()), host, port, options, settings)
    click.echo(f"serving {directory} on {url} with Ray Serve: the console at /, the API at /docs", err=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    from ray import serve

    serve.shutdown()


@main.command("query")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--text", "texts", multiple=True, help="A text query (repeatable).")
@click.option("--queries", type=click.Path(), help="Query file: .txt (one per line), .jsonl or .parquet.")
@click.option("--vectors", type=click.Path(), help="Query vectors, .npy of shape (n, dim) in --model's space.")
@click.option("-k", "k", type=int, default=10, show_default=True)
@click.option("--model", help="Query model (default: the serving model); any descendant of the gallery's model.")
@click.option("--payload", is_flag=True, help="Include stored text/metadata of each hit.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query: ids and scores, best first.")
@friendly
def query(
    directory: str,
    texts: tuple[str, ...],
    queries: str | None,
    vectors: str | None,
    k: int,
    model: str | None,
    payload: bool,
    as_json: bool,
) -> None:
    """Search a gallery: queries are embedded with the query model and mapped into the gallery's space."""
    import compatret
    from compatret.data.items import read_array, read_query_rows

    given = sum(bool(x) for x in (texts, queries, vectors))
    if given != 1:
        raise CompatretError("give exactly one of --text, --queries or --vectors")
    service = compatret.open(directory)
    if len(service) == 0:
        raise CompatretError(
            f"the gallery {directory} is empty: nothing to search yet; add rows with `compatret index add {directory} --items FILE`"
        )
    if vectors is not None:
        results = service.query(vectors=read_array(vectors, "query vectors"), model=model, k=k, include_payload=payload)
        asked: list[tuple[str | None, Any]] = [(None, None)] * len(results)
        labels = [f"vector {i}" for i in range(len(results))]
    else:
        asked = [(None, t) for t in texts] if texts else read_query_rows(queries)  # type: ignore[arg-type]
        qs = [q for _, q in asked]
        is_image = service.meta.modality == "image"
        results = (
            service.query(images=qs, model=model, k=k, include_payload=payload)
            if is_image
            else service.query(qs, model=model, k=k, include_payload=payload)
        )
        labels = [q if isinstance(q, str) else f"image {i}" for i, q in enumerate(qs)]
    if as_json:  # each line says which query it answers: its place in the input, its id and text when known
        for n, ((qid, q), r) in enumerate(zip(asked, results)):
            said = {"query_index": n, **({"query_id": qid} if qid is not None else {}), **({"query_text": q} if isinstance(q, str) else {})}
            say(json.dumps({**said, **r.to_dict()}))
        return
    for label, r in zip(labels, results):
        say(f"# {label}")
        for rank, (i, s) in enumerate(zip(r.ids, r.scores), 1):
            extra = ""
            if r.payloads is not None:  # title first (it names the item), then the start of its text
                p = r.payloads[rank - 1]
                shown = " | ".join(x for x in (p.get("title"), (p.get("text") or "")[:120]) if x)
                extra = f"  [{p.get('model_version', '?')}]  {shown}" if shown else f"  [{p.get('model_version', '?')}]"
            say(f"{rank:>3}  {s:.4f}  {i}{extra}")


@main.command("quickstart")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default="indexes/quickstart",
    show_default=True,
    help="Empty folder for the models and galleries it makes.",
)
@click.option("--data", type=click.Path(file_okay=False), help="Image folder with train.parquet/test.parquet (default: bundled digits).")
@click.option("--json", "as_json", is_flag=True)
@friendly
def quickstart(workdir: str, data: str | None, as_json: bool) -> None:
    """Train v1, build its gallery, train a compatible v2, upgrade without backfill, and compare."""
    from compatret.cli.quickstart import run_quickstart

    if data is not None and not Path(data).is_dir():
        raise CompatretError(f"--data {data} is not a folder")
    report = run_quickstart(workdir, data=data, progress=not as_json)
    if as_json:
        say(json.dumps(report.to_dict()))
        return
    say(report.table())
    say(f"\nupgrade v1 -> v2-bct took {report.upgrade_seconds * 1000:.1f} ms and re-embedded nothing")
    say(f"upgrade to v2-independent refused: {report.refused}")
    say(f"models and galleries in {workdir}; total {report.seconds:.0f} s")


train.add_command(retriever)
eval_group.add_command(retrieval)
eval_group.add_command(regression)
main.add_command(train)
main.add_command(adapt)
main.add_command(model_group)
main.add_command(eval_group, name="eval")
main.add_command(index)
