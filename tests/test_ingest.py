"""Indexing into a collection: incremental runs, bad files, moves, model mismatch, kill -9 resume."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scenes import write_scenes
from sharpclip.collection import Collection
from sharpclip.data import shapes
from sharpclip.data.imagefiles import load_rgb
from sharpclip.ingest import IndexConfig
from sharpclip.store.collection import CollectionError, ModelMismatchError
from tiny_checkpoints import save_tiny_clip

INLINE = IndexConfig(workers=0, batch_size=4, progress=False)


def stored_vector(coll: Collection, path: Path) -> np.ndarray:
    item = coll.item(path)
    assert item is not None and item.status == "ok", (path, item)
    return np.asarray(coll.vectors()[item.row])


def assert_vectors_match_files(coll: Collection, model, paths: list[Path]) -> None:
    expected = model.encode_images([load_rgb(p) for p in paths])
    got = np.stack([stored_vector(coll, p) for p in paths])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_incremental_add_change_delete_move(tmp_path, model):
    photos = tmp_path / "photos"
    paths = write_scenes(photos, 10, seed=1) + write_scenes(photos / "sub", 3, seed=2)
    coll = Collection.create(tmp_path / "c.sc", model)
    report = coll.add([photos], config=INLINE)
    assert (report.new, report.failed, coll.counts()["ok"]) == (13, 0, 13)
    assert_vectors_match_files(coll, model, paths)

    again = coll.add([photos], config=INLINE)
    assert (again.new, again.changed, again.unchanged, again.embedded) == (0, 0, 13, 0)

    changed = paths[0]
    shapes.render(shapes.random_spec(np.random.default_rng(5), "single"), 64,
                  np.random.default_rng(5)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    touched = paths[1]
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))  # same bytes, new mtime
    gone = paths[2]
    gone.unlink()
    moved_from, moved_to = paths[3], photos / "sub" / "renamed.png"
    row_before = coll.item(moved_from).row
    moved_from.rename(moved_to)
    added = write_scenes(photos, 1, seed=9, prefix="new")

    report = coll.add([photos], config=INLINE)
    assert (report.new, report.changed, report.moved, report.removed) == (1, 1, 1, 1)
    assert report.embedded == 2  # the touched and the moved file are not re-embedded
    assert coll.item(gone) is None and coll.item(moved_from) is None
    assert coll.item(moved_to).row == row_before
    live = [p for p in paths if p not in (gone, moved_from)] + [moved_to] + added
    assert coll.counts()["ok"] == len(live) == 13
    assert_vectors_match_files(coll, model, live)
    rows, _ = coll.live_rows()
    assert len(set(rows.tolist())) == len(rows) == 13


def test_other_roots_are_left_alone(tmp_path, model):
    a = write_scenes(tmp_path / "a", 2, seed=1)
    write_scenes(tmp_path / "b", 2, seed=2)
    coll = Collection.create(tmp_path / "c.sc", model)
    coll.add([tmp_path / "a", tmp_path / "b"], config=INLINE)
    coll.add([tmp_path / "b"], config=INLINE)
    assert coll.counts()["ok"] == 4 and coll.item(a[0]) is not None


def make_bad_files(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    good = shapes.render(shapes.random_spec(np.random.default_rng(0), "single"), 64,
                         np.random.default_rng(0))
    (folder / "empty.png").write_bytes(b"")
    good.save(folder / "whole.jpg", quality=90)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "whole.jpg").unlink()
    (folder / "notes.jpg").write_text("this is not an image\n")
    good.resize((400, 400)).save(folder / "huge.png")
    return {"empty.png": "empty", "truncated.jpg": "truncated", "notes.jpg": "not_an_image",
            "huge.png": "too_large"}


def test_bad_files_are_recorded_not_retried_until_changed(tmp_path, model):
    expected = make_bad_files(tmp_path / "in")
    good = write_scenes(tmp_path / "in", 2, seed=3)
    coll = Collection.create(tmp_path / "c.sc", model)
    config = IndexConfig(workers=0, batch_size=4, progress=False, max_pixels=100_000)
    report = coll.add([tmp_path / "in"], config=config)
    assert (report.new, report.failed) == (2, 4)
    reasons = {Path(i.path).name: i.reason for i in coll.items("error")}
    assert reasons == expected
    assert all(Path(i.path).name in i.error for i in coll.items("error"))
    assert_vectors_match_files(coll, model, good)

    again = coll.add([tmp_path / "in"], config=config)
    assert (again.failed, again.unchanged, again.embedded) == (0, 6, 0)

    fixed = tmp_path / "in" / "notes.jpg"
    load_rgb(good[0]).save(fixed, format="JPEG")
    os.utime(fixed, ns=(time.time_ns(), time.time_ns() + 10**9))
    retried = coll.add([tmp_path / "in"], config=config)
    assert (retried.changed, retried.failed) == (1, 0)
    assert coll.item(fixed).status == "ok"


def test_unreadable_file_is_recorded(tmp_path, model, monkeypatch):
    paths = write_scenes(tmp_path / "in", 3, seed=4)
    from sharpclip.data import imagefiles

    real = imagefiles.content_hash

    def refuse(path):
        if str(path).endswith("scene001.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(imagefiles, "content_hash", refuse)
    coll = Collection.create(tmp_path / "c.sc", model)
    report = coll.add([tmp_path / "in"], config=INLINE)
    assert report.failed == 1 and coll.item(paths[1]).reason == "unreadable"
    assert coll.counts() == {"ok": 2, "error": 1}


def test_worker_processes_give_identical_vectors(tmp_path, model):
    paths = write_scenes(tmp_path / "in", 9, seed=6)
    inline = Collection.create(tmp_path / "a.sc", model)
    inline.add([tmp_path / "in"], config=INLINE)
    pooled = Collection.create(tmp_path / "b.sc", model)
    pooled.add([tmp_path / "in"], config=IndexConfig(workers=2, batch_size=4, progress=False))
    for p in paths:
        np.testing.assert_array_equal(stored_vector(inline, p), stored_vector(pooled, p))


def test_auto_workers_sizes_the_pool_from_the_first_batch(tmp_path, model):
    import torch

    paths = write_scenes(tmp_path / "in", 11, seed=7)
    inline = Collection.create(tmp_path / "a.sc", model)
    inline.add([tmp_path / "in"], config=INLINE)
    threads = torch.get_num_threads()
    auto = Collection.create(tmp_path / "b.sc", model)
    report = auto.add([tmp_path / "in"], config=IndexConfig(batch_size=4, progress=False))
    assert IndexConfig().workers == "auto"
    assert report.new == 11 and report.workers >= 1  # 4 files probed inline, 7 by the pool
    assert torch.get_num_threads() == threads  # decoding in this process left torch's threads be
    for p in paths:
        np.testing.assert_array_equal(stored_vector(inline, p), stored_vector(auto, p))
    few = Collection.create(tmp_path / "c.sc", model)
    report = few.add([paths[0], paths[1]], config=IndexConfig(batch_size=4, progress=False))
    assert report.new == 2 and report.workers == 0  # one batch or less: no pool is started


def test_item_is_found_by_its_stored_path_and_by_an_alias(tmp_path, model):
    real = tmp_path / "real"
    paths = write_scenes(real, 2, seed=8)
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    coll = Collection.create(tmp_path / "c.sc", model)
    coll.add([tmp_path / "alias"], config=INLINE)  # stored under the resolved directory
    stored = coll.item(paths[0])
    assert stored is not None and stored.path == str(paths[0].resolve())
    for given in (stored.path, tmp_path / "alias" / paths[0].name,
                  f"{tmp_path}/alias/../real/{paths[0].name}"):
        assert coll.item(given) == stored, given
    assert coll.item(tmp_path / "alias" / "missing.png") is None
    assert coll.paths_by_id([stored.id, 10**9]) == {stored.id: stored.path}


@pytest.mark.parametrize(("decode_s", "embed_s", "cores", "expected"), [
    (0.16, 1.9, 2, 1),    # a ViT-B/32 on 2 cores: decoding is 8% of the model's time
    (0.16, 0.02, 2, 2),   # a tiny model: decode-bound, as many as there are cores
    (0.16, 0.05, 16, 4),  # 3.2 rounded up
    (0.16, 0.0, 4, 4),
    (5.0, 0.01, 64, 16),  # never more than MAX_AUTO_WORKERS
    (0.0, 1.0, 8, 1),
])
def test_auto_workers_rule(decode_s, embed_s, cores, expected):
    from sharpclip.ingest.run import auto_workers

    assert auto_workers(decode_s, embed_s, cores) == expected


def test_decode_workers_never_import_torch():
    """A decode worker's imports: the module it runs and its set-up (torch costs 1.5 CPU-s)."""
    code = ("import sys; from sharpclip.ingest.decode import init_worker; "
            "from sharpclip.ingest.stages import stages_for; "
            "from sharpclip.models.preprocess import ImagePreprocessor; "
            "init_worker(ImagePreprocessor.from_config({'crop_size': 224}), stages_for(None), "
            "10**8, None); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_index_workers_option_errors_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sharpclip.cli", "index", str(tmp_path), "-c",
                          str(tmp_path / "c"), "--workers", "many"], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 2
    assert "'many': give auto or a whole number >= 0" in out.stderr
    assert "Traceback" not in out.stderr


def test_model_mismatch_is_refused(tmp_path, model):
    Collection.create(tmp_path / "c.sc", model).close()
    tiny = save_tiny_clip(tmp_path / "tiny")
    with pytest.raises(ModelMismatchError, match="fingerprint") as error:
        Collection.open(tmp_path / "c.sc", str(tiny))
    assert "bundled" in str(error.value) and str(tiny) in str(error.value)
    with pytest.raises(CollectionError, match="already a collection"):
        Collection.create(tmp_path / "c.sc", model)
    with pytest.raises(CollectionError, match="not a sharpclip collection"):
        Collection.open(tmp_path / "nothing")


def test_any_hf_checkpoint_indexes(tmp_path):
    tiny = save_tiny_clip(tmp_path / "tiny", image_size=40, dim=24)
    paths = write_scenes(tmp_path / "in", 5, seed=7)
    coll = Collection.create(tmp_path / "c.sc", str(tiny))
    coll.add([tmp_path / "in"], config=INLINE)
    assert coll.vectors().shape[1] == coll.model.dim
    assert_vectors_match_files(coll, coll.model, paths)


def committed_rows(path: Path) -> int:
    if not (path / "collection.sqlite").exists():
        return 0
    db = sqlite3.connect(path / "collection.sqlite")
    try:
        return db.execute("SELECT rows FROM vector_sets WHERE name = 'image'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def test_kill_9_then_resume_loses_and_duplicates_nothing(tmp_path, model):
    paths = write_scenes(tmp_path / "in", 120, seed=8)
    coll_path = tmp_path / "c.sc"
    command = [sys.executable, "-m", "sharpclip.cli", "index", str(tmp_path / "in"),
               "-c", str(coll_path), "--batch-size", "2", "--workers", "0", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pauses = [0.0, 0.013, 0.031]  # after a commit, and at two points between commits
    for pause in pauses:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        target = committed_rows(coll_path) + 6
        deadline = time.time() + 120
        while committed_rows(coll_path) < target and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(pause)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert subprocess.run(command, env=env, capture_output=True, check=False).returncode == 0
    coll = Collection.open(coll_path)
    assert coll.counts() == {"ok": 120, "error": 0}
    rows, _ = coll.live_rows()
    assert len(set(rows.tolist())) == 120
    assert coll.vectors().shape[0] == 120  # torn tails were trimmed, nothing stored twice
    assert_vectors_match_files(coll, model, paths)


def test_torn_vector_tail_is_trimmed(tmp_path, model):
    paths = write_scenes(tmp_path / "in", 4, seed=9)
    coll = Collection.create(tmp_path / "c.sc", model)
    coll.add([paths[0], paths[1]], config=INLINE)
    with open(coll.path / "vectors" / "image.f32", "ab") as handle:
        handle.write(b"\x01" * 4 * coll.info.dim * 3 + b"\x02" * 7)  # an append never committed
    coll.add([tmp_path / "in"], config=INLINE)
    assert coll.vectors().shape[0] == 4
    assert_vectors_match_files(coll, model, paths)
