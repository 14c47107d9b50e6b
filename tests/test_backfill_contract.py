"""What one backfill run promises beyond the rows it re-embeds: its bounds, its batches, its
compactions, its progress bar, its report, the rows it must leave alone, and the crowding order."""

from __future__ import annotations

import numpy as np
import pytest
from test_backfill import upgraded_gallery
from test_backfill_rollback import rollback_before_batch
from test_service import toy_model  # noqa: F401  (a fixture: a loopback embeddings endpoint and a model registered on it)

import compatret.engine.backfill as backfill_module
from compatret import CompatretError
from compatret.engine.backfill import backfill, crowding, plan_order
from compatret.engine.service import Service
from compatret.search.kernels import sample_labelled
from compatret.store.history import INDEX_BUILT, MAINTENANCE, history, rollback
from compatret.store.pending import pending_rows


def with_bare_rows(tmp_path, digit_models, n: int) -> Service:
    """n digit rows and 20 bare v1 vectors (stored by `index add --vectors`), upgraded to v2."""
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    s.add_items(digit_models["items"][:n], progress=False)
    s.add_vectors(np.random.default_rng(1).normal(size=(20, s.meta.serving.dim)).astype(np.float32), ids=[f"bare{i}" for i in range(20)])
    s.upgrade(digit_models["v2"])
    return Service.open(tmp_path / "g")


@pytest.mark.parametrize("kwargs, message", [
    ({"limit": -1}, "^--limit must be >= 0, got -1$"),
    ({"fraction": 1.5}, r"^--fraction must be within \[0, 1\], got 1.5$"),
    ({"fraction": -0.1}, r"^--fraction must be within \[0, 1\], got -0.1$"),
    ({"batch_size": 0}, "^--batch-size must be >= 1$"),
    ({"limit": 3, "fraction": 0.5}, "^give --limit or --fraction, not both$"),
], ids=["negative-limit", "fraction-over-1", "negative-fraction", "batch-0", "limit-and-fraction"])
def test_a_backfill_out_of_bounds_is_refused_before_it_writes(tmp_path, digit_models, kwargs, message):
    s = upgraded_gallery(tmp_path, digit_models, n=8)
    version = s.gallery.version
    with pytest.raises(CompatretError, match=message):
        backfill(s, progress=False, **kwargs)
    assert Service.open(tmp_path / "g").gallery.version == version


@pytest.mark.parametrize("kwargs, done", [({"limit": 0}, 0), ({"fraction": 0.0}, 0), ({"fraction": 1.0}, 8), ({"batch_size": 1}, 8)],
                         ids=["limit-0", "fraction-0", "fraction-1", "batch-1"])
def test_a_backfill_at_its_bounds_runs(tmp_path, digit_models, kwargs, done):
    s = upgraded_gallery(tmp_path, digit_models, n=8)
    assert backfill(s, progress=False, **kwargs).done == done


@pytest.mark.parametrize("every, expected", [("1", ["R", "M"] * 4), ("2", ["R", "R", "M"] * 2)])
def test_a_backfill_compacts_every_n_batches(tmp_path, digit_models, monkeypatch, every, expected):
    """$COMPATRET_COMPACT_EVERY batches between compactions: 64 rows in batches of 16 commit 4 times."""
    monkeypatch.setenv("COMPATRET_COMPACT_EVERY", every)
    s = upgraded_gallery(tmp_path, digit_models, n=64)
    start = s.gallery.version
    backfill(s, batch_size=16, progress=False)
    changes = [h["change"] for h in history(Service.open(tmp_path / "g").gallery) if h["version"] > start]
    marks = [{"vectors rewritten": "R", MAINTENANCE: "M"}[c] for c in changes if c not in (INDEX_BUILT, "v2 registered for the rows it writes")]
    assert [m for i, m in enumerate(marks) if not (m == "M" and marks[i - 1] == "M")] == expected  # a compaction may commit more than one version


def test_a_default_backfill_sends_batches_of_64_shows_its_bar_and_reports_the_run(tmp_path, digit_models, monkeypatch, capsys):
    """150 embeddable rows and 20 bare old vectors (nothing to embed them from): the model gets
    batches of 64, the bar counts rows to 150/150, and the report names the model, the time it
    took and the rows it had to skip."""
    s = with_bare_rows(tmp_path, digit_models, n=150)
    encoder = s.encoder()
    batches: list[tuple[int, int]] = []
    real = encoder.encode_items

    def recording(items, batch_size=32):
        batches.append((len(items), batch_size))
        return real(items, batch_size=batch_size)

    monkeypatch.setattr(encoder, "encode_items", recording)
    capsys.readouterr()
    report = backfill(s)
    assert batches == [(64, 64), (64, 64), (22, 64)]
    bar = capsys.readouterr().err
    assert "backfill -> v2: 100%" in bar and "150/150" in bar and "row/s" in bar
    assert (report.done, report.remaining, report.serving, report.stopped) == (150, 0, "v2", False)
    assert report.skipped == 20 and report.skipped_examples == tuple(f"bare{i}" for i in range(5))
    assert report.seconds > 0 and report.rows_per_s > 0 and report.endpoint is None


def test_no_bar_without_progress_and_a_second_pass_grows_the_bar(tmp_path, digit_models, capsys):
    """A first run of 16 rows with progress off writes nothing to stderr. A second run is rolled back,
    after 3 batches of 16, to the version the first run left: its 48 rows are old again, the run
    goes round once more, and its bar grows to the 80 + 48 rows it re-embedded."""
    s = upgraded_gallery(tmp_path, digit_models, n=96)
    capsys.readouterr()
    assert backfill(s, limit=16, batch_size=16, progress=False).done == 16
    assert capsys.readouterr().err == ""
    upgraded = Service.open(tmp_path / "g").gallery.version
    report = backfill(Service.open(tmp_path / "g"), batch_size=16, should_stop=rollback_before_batch(tmp_path / "g", upgraded, 4))
    assert report.done == 80 + 48 and "128/128" in capsys.readouterr().err


def test_a_row_deleted_during_the_backfill_is_left_alone(tmp_path, digit_models):
    s = upgraded_gallery(tmp_path, digit_models, n=48)
    gone = digit_models["items"][40]["id"]

    def delete_once() -> bool:
        if gone not in deleted:
            Service.open(tmp_path / "g").delete([gone])
            deleted.add(gone)
        return False

    deleted: set[str] = set()
    report = backfill(s, batch_size=16, progress=False, should_stop=delete_once)
    assert (report.done, report.remaining) == (47, 0)
    assert Service.open(tmp_path / "g").rows_by_version() == {"v2": 47}


def test_a_fraction_counts_rows_that_cannot_be_reembedded_as_not_done(tmp_path, digit_models):
    """60 embeddable rows and 20 bare old vectors: half of the 80 rows on v2 means 40 re-embedded."""
    assert backfill(with_bare_rows(tmp_path, digit_models, n=60), fraction=0.5, progress=False).done == 40


def test_a_random_order_backfill_re_embeds_whole_blocks_of_a_batch(tmp_path, digit_models):
    """`--limit 16 --batch-size 16` in random order re-embeds one run of 16 consecutive table rows."""
    s = upgraded_gallery(tmp_path, digit_models, n=96)
    backfill(s, limit=16, batch_size=16, order="random", progress=False)
    table = [it["id"] for it in digit_models["items"][:96]]
    rows = Service.open(tmp_path / "g").gallery.vectors_by_id()
    done = sorted(table.index(i) for i, (v, _) in rows.items() if v == "v2")
    assert len(done) == 16 and done[0] % 16 == 0 and done == list(range(done[0], done[0] + 16))


def test_a_serving_model_changed_after_the_last_batch_fails_the_run_with_its_count(tmp_path, digit_models, monkeypatch):
    """The rollback lands after the last commit, before the run reads the pending rows again."""
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    s.add_items(digit_models["items"][:32], progress=False)
    point = s.gallery.version
    s.upgrade(digit_models["v2"])
    real, calls = backfill_module.pending_rows, []

    def rolled_back_at_the_reread(gallery):
        calls.append(1)
        if len(calls) == 2:  # the first read plans the run; the second is the reread after its batches
            rollback(Service.open(tmp_path / "g").gallery, point)
        return real(gallery)

    monkeypatch.setattr(backfill_module, "pending_rows", rolled_back_at_the_reread)
    with pytest.raises(CompatretError, match=r"changed from v2 to v1 during the backfill.*: 32 rows re-embedded with v2"):
        backfill(s, batch_size=16, progress=False)


def test_crowding_is_the_mean_cosine_to_the_nearest_landmarks_other_than_the_row(tmp_path):
    """2,100 rows in two fragments, more than the 2,048 landmarks: each row's score is the mean of
    its `neighbours` best cosines to sampled rows other than itself (landmarks drawn with seed 0)."""
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(2100, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    s = Service.create(tmp_path / "g", dim=8, version_id="v1")
    s.add_vectors(vectors[:1000], ids=[f"r{i}" for i in range(1000)])
    s.add_vectors(vectors[1000:], ids=[f"r{i}" for i in range(1000, 2100)])
    s = Service.open(tmp_path / "g")
    parts = list(s.index.rows("v1"))
    assert len(parts) == 2
    landmark_labels, landmarks = sample_labelled([(labels, v) for _, labels, v in parts], 2048, np.random.default_rng(0))
    assert len(landmarks) < 2100
    label_of = {i: lab for ids, labels, _ in parts for i, lab in zip(ids.tolist(), labels.tolist())}
    wanted = [f"r{i}" for i in range(1000, 2100, 7)]  # rows of the second fragment only
    for neighbours in (10, 1):
        scores = crowding(s, wanted) if neighbours == 10 else crowding(s, wanted, neighbours=1)
        assert sorted(scores) == sorted(wanted)
        for row in wanted:
            cos = landmarks @ vectors[int(row[1:])]
            others = np.sort(cos[landmark_labels != label_of[row]])[::-1]
            assert scores[row] == pytest.approx(float(others[:neighbours].mean()), abs=1e-5), (row, neighbours)


def test_rows_of_a_version_are_the_rows_it_made_with_their_stored_vectors(tmp_path, digit_models):
    """What adapters train on: half backfilled, each version's rows and vectors as the table holds them."""
    s = upgraded_gallery(tmp_path, digit_models, n=64)
    backfill(s, limit=24, batch_size=8, progress=False)
    g = Service.open(tmp_path / "g").gallery
    stored = g.vectors_by_id()
    for version, count in (("v1", 40), ("v2", 24)):
        ids, vectors = g.rows_of(version)
        assert len(ids) == len(set(ids)) == count and vectors.dtype == np.float32 and vectors.shape[0] == count
        for i, vec in zip(ids, vectors):
            assert stored[i][0] == version and np.array_equal(stored[i][1], vec)


def _mapped_gallery(tmp_path) -> Service:
    """300 v1 rows served by v2 through a fitted linear map (a transform rule): every row is mapped."""
    from test_incremental_kernels import folder, vectors

    from compatret import Compat, ModelVersion

    v1 = ModelVersion("v1", 6)
    s = Service.create(tmp_path / "m", model=folder(tmp_path, v1))
    s.add_vectors(vectors(300, 6, 0), ids=[f"r{i:03d}" for i in range(300)])
    v2 = ModelVersion("v2", 6, parent=v1, compat=Compat.transform("transforms/v2.npy"), method="fct")
    d = tmp_path / "v2"
    (d / "transforms").mkdir(parents=True)
    v2.save(d)
    w = np.random.default_rng(1).normal(size=(6, 6)).astype(np.float32)
    np.save(d / "transforms" / "v2.npy", np.vstack([w, np.zeros((1, 6), np.float32)]))
    s.upgrade(str(d))
    return Service.open(tmp_path / "m")


def test_auto_order_is_uncertainty_through_a_fitted_map_and_random_otherwise(tmp_path, digit_models):
    mapped = _mapped_gallery(tmp_path)
    ids = list(mapped.gallery.vectors_by_id())
    assert "mapped" in mapped.rows_by_plan()
    assert plan_order(mapped, ids, "auto") == plan_order(mapped, ids, "uncertainty") != plan_order(mapped, ids, "random")
    plain = upgraded_gallery(tmp_path, digit_models, n=100)
    table = pending_rows(plain.gallery).ids
    assert plan_order(plain, table, "auto") == plan_order(plain, table, "random") != table


def test_a_random_order_is_seeded_by_the_serving_model_and_keeps_every_row(tmp_path, digit_models):
    s = upgraded_gallery(tmp_path, digit_models, n=100)
    table = pending_rows(s.gallery).ids
    single = plan_order(s, table, "random")
    assert sorted(single) == sorted(table) and single != table and single != sorted(table)
    pairs = [(single.index(table[k]), single.index(table[k + 1])) for k in range(0, len(table) - 1, 2)]
    assert any(b != a + 1 for a, b in pairs)  # rows, not blocks of two, unless a block is asked for
    assert single == plan_order(s, table, "random", seed="v2") != plan_order(s, table, "random", seed="another")
    with pytest.raises(CompatretError, match=r"unknown order 'fastest'; choose from \('auto', 'random', 'uncertainty'\)"):
        plan_order(s, table, "fastest")


def test_a_stopped_backfill_reports_what_it_did(tmp_path, digit_models):
    """Stopped after its first batch (a server's stop request): a report, stopped, with that batch done."""
    s = upgraded_gallery(tmp_path, digit_models, n=64)
    asked = []
    report = backfill(s, batch_size=16, progress=False, should_stop=lambda: asked.append(1) or len(asked) > 1)
    assert (report.done, report.remaining, report.stopped) == (16, 48, True)
    assert set(report.to_dict()) == {"done", "remaining", "seconds", "rows_per_s", "stopped", "serving", "skipped", "skipped_examples"}
    assert report.to_dict()["done"] == 16 and report.to_dict()["serving"] == "v2"


def test_a_serving_model_without_weights_cannot_backfill(tmp_path, digit_models):
    """A model registered by its lineage alone (no encoder in its folder): queries take vectors, a
    backfill has nothing to embed rows with, and says so before it plans anything."""
    from compatret import Compat, ModelVersion

    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    s.add_items(digit_models["items"][:8], progress=False)
    bare = tmp_path / "v3"
    bare.mkdir()
    ModelVersion("v3", s.meta.serving.dim, modality="image", parent=s.meta.serving, compat=Compat.identity(), method="bct").save(bare)
    s.upgrade(str(bare))
    with pytest.raises(CompatretError, match=r"^serving model 'v3' has no weights recorded here: nothing can re-embed rows$"):
        backfill(Service.open(tmp_path / "g"), progress=False)


def test_a_report_names_what_the_endpoint_cost_only_when_there_was_one():
    from compatret.engine.backfill import BackfillReport

    plain = BackfillReport(3, 0, 1.5, False, "v2")
    assert "endpoint" not in plain.to_dict() and plain.to_dict()["rows_per_s"] == 2.0
    costly = BackfillReport(3, 0, 1.5, False, "v2", endpoint={"requests": 2.0, "retries": 1.0})
    assert costly.to_dict()["endpoint"] == {"requests": 2.0, "retries": 1.0}


def test_a_backfill_keeps_each_rows_title_text_image_and_metadata(tmp_path, digit_models):
    from compatret.store.gallery import Gallery

    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    items = [{**it, "title": f"digit {n}", "text": f"caption {n}", "metadata": {"n": n}} for n, it in enumerate(digit_models["items"][:12])]
    s.add_items(items, progress=False)
    s.upgrade(digit_models["v2"])
    columns = ["id", "title", "text", "image", "metadata"]
    before = Gallery.open(tmp_path / "g")._rows([it["id"] for it in items], columns)
    assert backfill(Service.open(tmp_path / "g"), batch_size=5, progress=False).done == 12
    g = Gallery.open(tmp_path / "g")
    assert g._rows([it["id"] for it in items], columns) == before and g.rows_by_version() == {"v2": 12}


def test_a_backfill_batch_that_keeps_losing_races_names_itself_and_rereads_before_each_retry(tmp_path, digit_models, monkeypatch):
    from lance.commit import CommitConflictError

    import compatret.store.gallery as gallery_module

    s = upgraded_gallery(tmp_path, digit_models, n=4)
    refreshed = []
    monkeypatch.setattr(gallery_module, "commit_replacement", lambda *_: (_ for _ in ()).throw(CommitConflictError("lost the race")))
    monkeypatch.setattr(s.gallery.table, "checkout_latest", lambda: refreshed.append(1))
    with pytest.raises(CompatretError, match=r"^backfill batch: commit conflict with another writer after 5 tries \(lost the race\)$"):
        backfill(s, progress=False)
    assert len(refreshed) >= 5 and Service.open(tmp_path / "g").rows_by_version() == {"v1": 4}  # no row re-embedded


def test_a_backfill_through_an_endpoint_checks_it_first_and_reports_what_this_run_cost(tmp_path, toy_model, capsys):
    """Rows written by one endpoint model, served through an adapter over another on the same
    endpoint. While the endpoint serves another model, a backfill is refused before it writes, in
    one line that says what was refused. Then the report counts the calls this run made (4
    batches of 16 rows), not the query the same service embedded before, in the time the run took,
    and its bar shows them; a rerun with nothing left loads no model."""
    import time

    import compatret
    from compatret.encoders.remote import EndpointSettings, register

    toy, folder = toy_model
    register(tmp_path / "toyb", "toyb", EndpointSettings(endpoint=toy.url, model="toyb", dim=8, max_retries=0))
    ix = compatret.create(tmp_path / "g", model=folder)
    ix.add([f"text number {i}" for i in range(60)], ids=[f"t{i}" for i in range(60)])
    ix.adapt(str(tmp_path / "toyb"), tmp_path / "ad", kind="procrustes", force=True)
    ix.upgrade(str(tmp_path / "ad"))
    toy.model = "toy-2"  # the provider serves another model under the same name
    with pytest.raises(CompatretError) as refused:
        backfill(Service.open(tmp_path / "g"), progress=False)
    assert "no longer returns the registered model's vectors" in str(refused.value) and "refusing to backfill with it;" in str(refused.value)
    assert Service.open(tmp_path / "g").rows_by_version() == {"toy": 60}
    toy.model = "toy-1"
    s = Service.open(tmp_path / "g")
    s.query(texts=["a question first"], k=3)  # the serving encoder's first call, before the backfill
    t0 = time.perf_counter()
    report = backfill(s, batch_size=16, progress=True)
    wall = time.perf_counter() - t0
    assert (report.done, report.remaining) == (60, 0) and 0 < report.seconds <= wall
    assert report.endpoint == {"requests": 4, "tokens": 4, "retries": 0, "retry_seconds": 0.0}
    assert "requests=4" in capsys.readouterr().err
    assert backfill(s, progress=False).endpoint is None  # nothing left: the model was not needed


def test_a_pass_that_embeds_nothing_ends_the_run(tmp_path, digit_models):
    """Another backfill re-embeds this run's whole list while it runs (here: before its first
    batch), so its pass embeds nothing: the run ends there instead of taking a new list, so two
    runs taking each other's rows cannot chase each other for ever."""
    s = upgraded_gallery(tmp_path, digit_models, n=64)
    other = []

    def meanwhile() -> bool:
        if not other:
            other.append(backfill(Service.open(tmp_path / "g"), limit=16, batch_size=16, progress=False))
        return False

    report = backfill(s, limit=16, batch_size=16, progress=False, should_stop=meanwhile)
    assert other[0].done == 16 and (report.done, report.remaining, report.stopped) == (0, 48, False)
