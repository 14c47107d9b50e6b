"""The history a person reads (`index history`, `index info`) and the cache that spares re-reading
every version: the words of each event, a cache file that stays one entry per line, rollback's
errors and record; with them the records history is made of (a model's lineage file, item identity)."""

from __future__ import annotations

import datetime as dt
import json
import os
import warnings

import numpy as np
import pytest
from test_backfill import upgraded_gallery

from compatret import CompatretError
from compatret.core.digests import weights_digest
from compatret.core.lineage import Compat, ModelVersion
from compatret.engine.backfill import backfill
from compatret.engine.service import Service
from compatret.store.history import HistoryCache, describe_event, history, prune, rollback
from compatret.store.rows import _content


@pytest.mark.parametrize("event, words", [
    ({"event": "create", "model": "v1"}, "created with v1"),
    ({"event": "upgrade", "previous": "v1", "model": "v2"}, "upgrade from v1 to v2"),
    ({"event": "upgrade", "previous": "v1", "model": "v2", "gate": {"passed": True}}, "upgrade from v1 to v2 (gate passed)"),
    ({"event": "rollback", "to": 7}, "rollback to version 7"),
    ({"event": "retrain"}, "retrain"),
])
def test_each_gallery_event_reads_as_words(event, words):
    assert describe_event(event) == words


def test_the_history_cache_is_one_entry_per_line_readable_by_all_and_survives_foreign_bytes(tmp_path, digit_models):
    """Entries appended by several reads, after a torn line and after bytes that are not UTF-8:
    every line is an entry (a torn one excepted), never an empty line, and the history read
    through it equals the one worked out afresh."""
    old = os.umask(0o022)
    try:
        s = upgraded_gallery(tmp_path, digit_models, n=32)
        history(s.gallery)
        cache = HistoryCache(tmp_path / "g").file
        assert cache.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    backfill(s, batch_size=16, progress=False)
    history(Service.open(tmp_path / "g").gallery)
    with cache.open("ab") as f:
        f.write(b'{"version": 9, "ti\xff\xfe')  # a torn line with foreign bytes
    backfill(Service.open(tmp_path / "g"), progress=False)  # nothing left: no new version
    Service.open(tmp_path / "g").delete([digit_models["items"][0]["id"]])
    read = history(Service.open(tmp_path / "g").gallery)
    lines = cache.read_bytes().split(b"\n")
    assert lines[-1] == b"" and b"" not in lines[:-1]
    assert sum(b"\xff" in line for line in lines) == 1
    cache.unlink()
    assert history(Service.open(tmp_path / "g").gallery) == read  # worked out afresh from the table
    assert read[-1]["change"] == "rows -1"


def test_prune_to_the_latest_version_does_not_warn(tmp_path, digit_models):
    s = upgraded_gallery(tmp_path, digit_models, n=16)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        prune(s.gallery, dt.timedelta(0))
    assert [str(w.message) for w in seen if "optimize" in str(w.message)] == []


def test_an_item_without_an_image_is_the_same_item_as_one_whose_image_is_none():
    """What a rerun ingest compares: text items (no image key) against their stored rows (image None)."""
    assert _content({"id": "a", "text": "t", "title": "x"}) == _content({"id": "a", "text": "t", "title": "x", "image": None})
    assert _content({"text": "t", "image": b"\x01"}) != _content({"text": "t", "image": None})


def test_a_rollback_to_a_missing_version_says_which_exist_and_whether_pruning_took_it(tmp_path, digit_models):
    s = upgraded_gallery(tmp_path, digit_models, n=16)
    latest = s.gallery.version
    with pytest.raises(CompatretError) as err:
        rollback(s.gallery, 10_000)
    assert str(err.value) == f"no version 10000 (have 1..{latest})"
    prune(s.gallery, dt.timedelta(0))
    g = Service.open(tmp_path / "g").gallery
    oldest = min(int(v["version"]) for v in g.table.list_versions())
    assert oldest > 1
    with pytest.raises(CompatretError) as err:
        rollback(g, 1)
    assert str(err.value) == f"no version 1 (have {oldest}..{g.version}; pruned versions are gone)"


def test_a_rollback_records_the_version_it_came_from(tmp_path, digit_models):
    s = upgraded_gallery(tmp_path, digit_models, n=16)
    before = s.gallery.version
    meta = rollback(s.gallery, 2)
    assert meta.history[-1] == {**meta.history[-1], "event": "rollback", "to": 2, "from_version": before}
    assert Service.open(tmp_path / "g").meta.history[-1]["from_version"] == before


def test_a_one_dimension_prefix_is_a_rule_and_zero_is_refused():
    assert Compat.prefix(1).dims == 1
    with pytest.raises(CompatretError, match="prefix dims must be >= 1, got 0"):
        Compat.prefix(0)


def test_a_saved_model_record_carries_its_weights_digest_in_readable_json(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    path = ModelVersion("m1", 8).save(folder)
    raw = path.read_text()
    record = json.loads(raw)
    assert record["digest"] == weights_digest(folder) is not None
    assert raw == json.dumps(record, indent=2)


def test_a_broken_transform_outside_any_gallery_is_named_by_its_file_name_alone(tmp_path, monkeypatch):
    """Errors may reach an HTTP client: a plan with no gallery folder names the file, not its path."""
    from compatret.core.contract import apply_plan, resolve

    monkeypatch.chdir(tmp_path)
    (tmp_path / "transforms").mkdir()
    (tmp_path / "transforms" / "t.npy").write_bytes(b"not an array")
    v1 = ModelVersion("v1", 4)
    v2 = ModelVersion("v2", 4, parent=v1, compat=Compat.transform("transforms/t.npy"), method="fct")
    plan = resolve(v2, v1)
    assert plan.base_dir is None
    with pytest.raises(CompatretError, match=r"^cannot read transform t\.npy: "):
        apply_plan(plan, None, np.ones((1, 4), np.float32))


def test_a_version_another_tool_wrote_is_named_by_its_lance_operation(tmp_path):
    """A rewrite compatret has no words for (here another tool overwrote the table with the same
    rows) reads as 'table rewritten (Overwrite)'; a version whose transaction Lance cannot give
    (None: a table written by a release that kept none; a stand-in dataset here, as no release
    this one can install writes such a version) as 'table rewritten (unknown)'."""
    import lance

    from compatret.store.gallery import Gallery
    from compatret.store.history import _operation

    s = Service.create(tmp_path / "g", dim=4, version_id="v1")
    s.add_vectors(np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]] + 0.1, ids=[str(i) for i in range(5)])
    ds = Gallery.open(tmp_path / "g").dataset()
    lance.write_dataset(ds.to_table(), ds.uri, mode="overwrite", schema=ds.schema)
    last = history(Gallery.open(tmp_path / "g"))[-1]
    assert (last["rows"], last["change"]) == (5, "table rewritten (Overwrite)")

    class NoTransactions:
        def read_transaction(self, version: int) -> None:
            return None

    assert _operation(NoTransactions(), 3) == "table rewritten (unknown)"
