"""What an ingest promises besides the rows it stores: ids made for items without one, a rerun
that recognises items given by path, items with nothing to embed refused, batches of 256, a
progress bar, and a lock file that names the command that last wrote the gallery."""

from __future__ import annotations

import numpy as np
import pytest
from test_service import toy_model, vectors  # noqa: F401  (toy_model: a fixture)

from compatret import CompatretError
from compatret.engine.backfill import backfill
from compatret.engine.service import Service
from compatret.store.history import history, rollback
from compatret.store.writer_lock import holder


def test_items_without_ids_get_ids_of_their_own(tmp_path, digit_models):
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    items = digit_models["items"][:6]
    assert s.add_items([{"image": it["image"]} for it in items[:4]] + items[4:6], progress=False) == 6
    ids = list(Service.open(tmp_path / "g").gallery.vectors_by_id())
    assert len(ids) == len(set(ids)) == 6 and {items[4]["id"], items[5]["id"]} <= set(ids)


def test_a_rerun_of_items_given_by_path_adds_nothing(tmp_path, digit_models):
    """Items naming an image file (`image_path`), added again after a run that stored them:
    recognised as the same items (their stored bytes are the file's), not refused as other content."""
    items = []
    for it in digit_models["items"][:5]:
        path = tmp_path / f"{it['id']}.png"
        path.write_bytes(it["image"])
        items.append({"id": it["id"], "image_path": str(path)})
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    assert s.add_items(items, progress=False) == 5
    version = s.gallery.version
    assert Service.open(tmp_path / "g").add_items(items, progress=False) == 0
    assert Service.open(tmp_path / "g").gallery.version == version


def test_an_item_with_nothing_to_embed_is_refused_and_nothing_is_written(tmp_path, digit_models):
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    version = s.gallery.version
    with pytest.raises(CompatretError, match="1 items have no image, e.g. id 'blank'"):
        s.add_items([digit_models["items"][0], {"id": "blank", "title": "no image"}], progress=False)
    assert Service.open(tmp_path / "g").gallery.version == version


def test_a_default_ingest_commits_every_256_items_and_shows_its_bar(tmp_path, digit_models, capsys):
    """A killed ingest loses at most the 256 items in hand; the bar counts items."""
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    start = s.gallery.version
    items = [{**it, "id": f"{it['id']}-{c}"} for c in range(2) for it in digit_models["items"][:150]]
    capsys.readouterr()
    assert s.add_items(items) == 300
    assert [h["change"] for h in history(Service.open(tmp_path / "g").gallery) if h["version"] > start][:2] == ["rows +256", "rows +44"]
    bar = capsys.readouterr().err
    assert "embed+add: 100%" in bar and "300/300" in bar and "item/s" in bar
    s.add_items([{**digit_models["items"][0], "id": "quiet"}], progress=False)
    assert capsys.readouterr().err == ""


def test_the_writer_lock_names_the_command_that_last_wrote(tmp_path, digit_models):
    """What a writer that has to wait is told: `pid N (COMMAND) since ...`."""
    g = tmp_path / "g"
    s = Service.create(g, model=digit_models["v1"])
    s.add_items(digit_models["items"][:8], progress=False)
    assert holder(g)["command"] == "add items"
    start = s.gallery.version
    s.upgrade(digit_models["v2"])
    assert holder(g)["command"] == "upgrade"
    backfill(Service.open(g), progress=False)
    assert holder(g)["command"] == "backfill"
    Service.open(g).delete([digit_models["items"][0]["id"]])
    assert holder(g)["command"] == "delete"
    rollback(Service.open(g).gallery, start)
    assert holder(g)["command"] == "rollback"
    Service.open(g).add_vectors(vectors(1, 16), ids=["v"])
    assert holder(g)["command"] == "add vectors"


def test_vectors_with_ids_already_stored_are_refused_and_numeric_ids_are_text(tmp_path):
    s = Service.create(tmp_path / "g", dim=8, version_id="v1")
    s.add_vectors(vectors(5, 8), ids=np.arange(5))
    assert sorted(Service.open(tmp_path / "g").gallery.vectors_by_id()) == ["0", "1", "2", "3", "4"]
    version = Service.open(tmp_path / "g").gallery.version
    with pytest.raises(CompatretError, match="already in the gallery"):
        Service.open(tmp_path / "g").add_vectors(vectors(2, 8, seed=1), ids=np.arange(3, 5))
    with pytest.raises(CompatretError, match="already in the gallery"):
        Service.open(tmp_path / "g").add_vectors(vectors(2, 8, seed=1), ids=["4", "9"])
    assert Service.open(tmp_path / "g").gallery.version == version


def test_a_text_gallery_takes_title_only_items_knows_items_by_their_beir_id_and_refuses_images(tmp_path):
    s = Service.create(tmp_path / "g", model="minilm-l3")
    items = [{"_id": "t1", "title": "Aspirin, and nothing more"}, {"_id": "t2", "text": "reduces fever"}]
    assert s.add_items(items, progress=False) == 2
    assert s.add_items(items, progress=False) == 0  # a rerun: the same items, named by `_id` as a BEIR corpus names them
    version = s.gallery.version
    with pytest.raises(CompatretError, match=r"^this gallery holds text: 1 items carry an image, e\.g\. id 'img'$"):
        s.add_items([{"id": "ok", "text": "fine"}, {"id": "img", "text": "a caption", "image": b"\x89PNG"}], progress=False)
    assert Service.open(tmp_path / "g").gallery.version == version


def test_text_items_are_embedded_from_title_and_text_and_one_with_neither_is_named(tmp_path, toy_model):
    """Through a text model behind a (loopback) endpoint, whose vectors change with every character."""
    from compatret.core.transforms import normalize

    s = Service.create(tmp_path / "g", model=toy_model[1])
    items = [{"id": "a", "title": "A title", "text": "its body"}, {"id": "b", "text": "a body alone"}, {"id": "c", "title": "a title alone"}]
    assert s.add_items(items, progress=False) == 3
    want = normalize(s.encoder().encode_items([{"title": it.get("title"), "text": it.get("text")} for it in items]))
    found = s.query(vectors=want, k=1)
    assert [r.ids for r in found] == [["a"], ["b"], ["c"]] and all(r.scores[0] == pytest.approx(1.0, abs=1e-5) for r in found)
    with pytest.raises(CompatretError, match=r"^1 items have no text, e.g. id 'd'$"):
        s.add_items([{"id": "d", "title": ""}], progress=False)


def test_a_query_with_one_all_zero_row_among_others_is_refused_by_its_index(tmp_path):
    s = Service.create(tmp_path / "g", dim=4, version_id="v1")
    s.add_vectors(vectors(5, 4), ids=[str(i) for i in range(5)])
    q = vectors(3, 4, seed=1)
    q[1] = 0.0
    with pytest.raises(CompatretError, match=r"^query vector 1 is all zeros: it has no direction to rank by$"):
        s.query(vectors=q, k=2)


def test_a_rerun_of_add_vectors_skips_rows_stored_alike_in_any_block_within_a_millionth(tmp_path):
    """Blocks of 5: the first two are new, the last two stored already (read back after a round
    trip that moved one value by 5e-7, where a relative tolerance cannot help: it was 0)."""
    from compatret.core.transforms import normalize

    s = Service.create(tmp_path / "g", dim=8, version_id="v1")
    x = vectors(20, 8)
    x[:, 0] = 0.0
    x = normalize(x)
    ids = [f"r{i}" for i in range(20)]
    s.add_vectors(x[10:], ids=ids[10:])
    again = x.copy()
    again[:, 0] = 5e-7
    assert s.add_vectors(again, ids=ids, batch_size=5) == 10
    stored = Service.open(tmp_path / "g").gallery.scan(["id"]).column("id").to_pylist()
    assert sorted(stored) == sorted(ids)


@pytest.mark.parametrize("dim", [8, 12], ids=["same-width-same-column", "wider-no-column-yet"])
def test_an_id_stored_by_another_model_is_not_stored_alike(tmp_path, dim):
    from test_service import model_folder

    from compatret import Compat, ModelVersion

    v1 = ModelVersion("v1", 8)
    s = Service.create(tmp_path / "g", model=str(model_folder(tmp_path, v1)))
    x = vectors(1, dim)
    s.add_vectors(x[:, :8], ids=["a"])
    s.upgrade(str(model_folder(tmp_path, ModelVersion("v2", dim, parent=v1, compat=Compat.prefix(8), method="bt2"))))
    with pytest.raises(CompatretError, match=r"^ids are already in the gallery with other content, e.g. 'a'$"):
        s.add_vectors(x, ids=["a"], model="v2")
    assert Service.open(tmp_path / "g").rows_by_version() == {"v1": 1}


def test_a_rerun_of_add_items_finds_every_stored_item_however_many_filters_it_takes(tmp_path, digit_models, monkeypatch):
    import compatret.store.gallery as gallery_module

    monkeypatch.setattr(gallery_module, "ID_FILTER_MAX", 3)  # ids per `id IN (...)` filter: 10 items take 4
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    items = digit_models["items"][:12]
    assert s.add_items(items[:10], progress=False) == 10
    assert s.add_items(items, progress=False) == 2
    assert len(Service.open(tmp_path / "g").gallery.scan(["id"]).column("id").to_pylist()) == 12


def test_add_vectors_shows_a_bar_of_batches_only_when_asked_and_refuses_a_repeated_id_naming_its_rows(tmp_path, capsys):
    s = Service.create(tmp_path / "g", dim=4, version_id="v1")
    s.add_vectors(vectors(9, 4), ids=[f"a{i}" for i in range(9)], batch_size=3)
    assert capsys.readouterr().err == ""
    s.add_vectors(vectors(9, 4, seed=1), ids=[f"b{i}" for i in range(9)], batch_size=3, progress=True)
    err = capsys.readouterr().err
    assert "add: 100%" in err and "3/3" in err and "batch/s" in err
    s.add_vectors(vectors(3, 4, seed=3), ids=["e0", "e1", "e2"], batch_size=3, progress=True)  # one batch: no bar
    assert capsys.readouterr().err == ""
    with pytest.raises(CompatretError, match=r"^duplicate id 'c' in the input: rows 1 and 3$"):
        s.add_vectors(vectors(3, 4, seed=2), ids=["c", "d", "c"])


def test_items_without_metadata_store_null_not_json_text(tmp_path, digit_models):
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    a, b, c = digit_models["items"][:3]
    s.add_items([{**a, "metadata": {"label": 1}}, {**b, "metadata": {}}, {**c, "metadata": None}], progress=False)
    stored = {r["id"]: r["metadata"] for r in s.gallery.scan(["id", "metadata"]).to_pylist()}
    assert stored == {a["id"]: '{"label": 1}', b["id"]: None, c["id"]: None}


def test_the_id_index_takes_waiting_rows_in_once_more_than_the_lag_and_a_tenth_of_it_wait(tmp_path):
    from compatret.store.gallery import ID_INDEX

    s = Service.create(tmp_path / "g", dim=4, version_id="v1")
    g = s.gallery
    added = iter(range(1000))

    def add(n: int) -> None:
        s.add_vectors(vectors(n, 4, seed=next(added)), ids=[f"r{next(added)}" for _ in range(n)])

    def ensure(lag: int) -> tuple[int, int]:
        with g.writing("test"):
            g.ensure_id_index(lag)
        stats = g.table.index_stats(ID_INDEX)
        return stats.num_indexed_rows, stats.num_unindexed_rows

    add(100)  # the first rows create the index
    add(10)  # the default lag (100,000) leaves these waiting
    assert ensure(5) == (100, 10)  # 10 wait, not more than max(5, a tenth of 100)
    assert ensure(0) == (110, 0)  # no lag: any waiting row joins
    add(1)
    assert ensure(0) == (111, 0)
    add(12)
    assert ensure(12) == (111, 12)  # exactly max(12, 11): not more
    assert ensure(11) == (123, 0)


def test_vectors_added_for_a_named_model_are_stored_as_its_rows(tmp_path):
    from test_service import model_folder

    from compatret import Compat, ModelVersion

    v1 = ModelVersion("v1", 8)
    v2 = ModelVersion("v2", 8, parent=v1, compat=Compat.prefix(6), method="bt2")
    s = Service.create(tmp_path / "g", model=str(model_folder(tmp_path, v1)))
    s.upgrade(str(model_folder(tmp_path, v2)))
    s.upgrade(str(model_folder(tmp_path, ModelVersion("v3", 8, parent=v2, compat=Compat.prefix(4), method="bt2"))))
    s.add_vectors(vectors(3, 8), ids=["a", "b", "c"], model="v2")  # neither the first model nor the serving one
    assert Service.open(tmp_path / "g").rows_by_version() == {"v2": 3}
