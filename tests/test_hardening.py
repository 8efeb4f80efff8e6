"""Hostile files, damaged collections and races: each case reproduces a defect found by trying
the product as a hostile user would, and checks that it is found, refused or repaired, never
silently wrong."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from scenes import write_scenes
from sharpclip.cli import main
from sharpclip.collection import Collection
from sharpclip.data.imagefiles import load_rgb
from sharpclip.ingest import IndexConfig
from sharpclip.store.collection import CollectionError, DamagedCollectionError
from sharpclip.store.search_index import SearchConfig

INLINE = IndexConfig(workers=0, batch_size=4, progress=False)


@pytest.fixture
def indexed(tmp_path, model):
    """12 scenes indexed in batches of 4 (3 checksum batches)."""
    paths = write_scenes(tmp_path / "in", 12, seed=21)
    coll = Collection.create(tmp_path / "c.sc", model)
    coll.add([tmp_path / "in"], config=INLINE)
    coll.close()
    return tmp_path / "c.sc", paths


def top_hit(coll_path: Path, image: Path) -> tuple[str, float]:
    with Collection.open(coll_path) as coll:
        hit = coll.search(image=image, k=1).hits[0]
    return hit.path, hit.score


def expected_vector(model, path: Path) -> np.ndarray:
    return model.encode_images([load_rgb(path)])[0]


# -- 1. the conditional cache is stamped with the generation its gallery was read at ------------


def test_condition_cache_never_hides_items_committed_while_it_was_computed(indexed, model,
                                                                             monkeypatch):
    coll_path, _ = indexed
    newcomer = write_scenes(coll_path.parent / "late", 1, seed=22, prefix="late")[0]
    coll = Collection.open(coll_path, model)
    real_encode = type(model).encode_texts
    fired = []

    def commit_meanwhile(self, texts):  # runs after the gallery was read, before the stamp
        if not fired:
            fired.append(True)
            with Collection.open(coll_path, model) as writer:
                writer.add([newcomer], config=INLINE)
        return real_encode(self, texts)

    monkeypatch.setattr(type(model), "encode_texts", commit_meanwhile)
    coll.search(like=coll.items("ok")[0].path, k=3, condition="colour")
    assert fired
    hits = coll.search(like=newcomer, k=3, condition="colour").hits
    assert hits[0].path == str(newcomer) and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_condition_cache_race_through_the_cli(indexed, tmp_path):
    """The issue's reproduction: conditional searches loop while `index --batch-size 1` adds
    files; afterwards each new image's own `--like` query returns it first."""
    coll_path, paths = indexed
    extra = write_scenes(tmp_path / "more", 8, seed=23, prefix="m")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, "-m", "sharpclip.cli", "index", str(tmp_path / "more"),
                               "-c", str(coll_path), "--batch-size", "1", "--workers", "0", "-q"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with Collection.open(coll_path) as reader:
        while writer.poll() is None:
            reader.search(like=paths[0], k=3, condition="colour")
        assert writer.returncode == 0, writer.stderr.read()
        for path in extra:
            assert reader.search(like=path, k=1, condition="colour").hits[0].path == str(path)


# -- 2. a short or missing vector file is detected, never padded ------------------------------


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_short_or_missing_vector_file_is_refused_then_reembedded(indexed, model, damage, capsys):
    coll_path, paths = indexed
    file = coll_path / "vectors" / "image.f32"
    if damage == "truncate":
        os.truncate(file, file.stat().st_size - 5 * model.dim * 4)  # the issue's `truncate -s`
    else:
        file.unlink()
    with Collection.open(coll_path) as coll, pytest.raises(DamagedCollectionError, match="--repair"):
        coll.search(image=paths[-1], k=1)
    assert main(["search", "--image", str(paths[-1]), "-c", str(coll_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image.f32" in err and "check" in err
    assert main(["index", str(paths[0].parent), "-c", str(coll_path), "-q"]) == 0
    assert "re-embedded" in capsys.readouterr().err
    with Collection.open(coll_path) as coll:
        assert coll.counts() == {"ok": 12, "error": 0}
        for path in paths:  # every item points at its own vector again, none at zeros
            np.testing.assert_allclose(coll.vectors()[coll.item(path).row],
                                       expected_vector(model, path), atol=1e-5)
    for path in (paths[0], paths[-1]):
        assert top_hit(coll_path, path) == (str(path), pytest.approx(1.0, abs=1e-4))


def test_vector_file_deleted_under_a_running_writer_is_refused(indexed, model, monkeypatch):
    """Appending to a recreated file would point new rows at other items' vectors."""
    coll_path, paths = indexed
    extra = write_scenes(coll_path.parent / "more", 2, seed=35, prefix="m")
    real_encode = type(model).encode_pixels

    def delete_then_encode(self, pixels):
        (coll_path / "vectors" / "image.f32").unlink(missing_ok=True)
        return real_encode(self, pixels)

    with Collection.open(coll_path, model) as coll:
        monkeypatch.setattr(type(model), "encode_pixels", delete_then_encode)
        with pytest.raises(DamagedCollectionError, match="run the same command again"):
            coll.add(extra, config=INLINE)
        monkeypatch.undo()
    with Collection.open(coll_path, model) as coll:
        coll.add([paths[0].parent, extra[0].parent], config=INLINE)  # the next run re-embeds
        assert coll.counts() == {"ok": 14, "error": 0}
        for path in paths + extra:
            assert coll.search(image=path, k=1).hits[0].path == str(path)


def test_a_read_only_cache_folder_only_costs_the_cache(indexed, model, monkeypatch):
    coll_path, paths = indexed
    for cached in (coll_path / "cache").glob("*"):  # what `index` cached (the live items)
        cached.unlink()
    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space")))
    with Collection.open(coll_path, model) as coll:
        hits = coll.search(like=paths[0], k=1, condition="colour").hits
    assert hits[0].path == str(paths[0])
    assert not list((coll_path / "cache").glob("*"))


# -- 3, 4. link loops, FIFOs and devices never abort or hang a run -----------------------------


def test_link_loops_fifos_and_devices_are_recorded_not_fatal(tmp_path, model):
    folder = tmp_path / "d"
    paths = write_scenes(folder, 3, seed=24)
    os.symlink("b.jpg", folder / "a.jpg")
    os.symlink("a.jpg", folder / "b.jpg")
    os.mkfifo(folder / "pipe.jpg")
    os.symlink("/dev/zero", folder / "zero.jpg")
    Collection.create(tmp_path / "c.sc", model).close()
    done = []

    def index_once():
        with Collection.open(tmp_path / "c.sc", model) as coll:
            done.append(coll.add([folder], config=INLINE))

    run = threading.Thread(target=index_once, daemon=True)
    run.start()
    run.join(60)
    assert done, "indexing hung on a FIFO or a device"
    coll = Collection.open(tmp_path / "c.sc", model)
    for _ in range(2):  # and on every rerun
        reasons = {Path(i.path).name: i.reason for i in coll.items("error")}
        assert reasons == {"a.jpg": "unreadable", "b.jpg": "unreadable",
                           "pipe.jpg": "not_a_file", "zero.jpg": "not_a_file"}
        assert coll.counts()["ok"] == len(paths)
        coll.add([folder], config=INLINE)


# -- 5. a link to a file outside the folder is keyed by the link ---------------------------


def test_link_to_outside_the_folder_is_removed_with_the_link(tmp_path, model):
    folder, outside = tmp_path / "d", tmp_path / "elsewhere"
    write_scenes(folder, 3, seed=25)
    target = write_scenes(outside, 1, seed=26, prefix="t")[0]
    link = folder / "link.png"
    os.symlink(target, link)
    coll = Collection.create(tmp_path / "c.sc", model)
    coll.add([folder], config=INLINE)
    assert coll.item(link) is not None and coll.item(target) is None
    assert coll.search(image=target, k=1).hits[0].path == str(link)
    link.unlink()
    target.unlink()
    report = coll.add([folder], config=INLINE)
    assert report.removed == 1 and coll.item(link) is None
    assert str(link) not in {h.path for h in coll.search(text="a shape", k=10).hits}


def test_dangling_link_is_recorded_under_its_own_name(tmp_path, model):
    folder = tmp_path / "d"
    write_scenes(folder, 1, seed=27)
    os.symlink("gone.png", folder / "dangling.png")
    coll = Collection.create(tmp_path / "c.sc", model)
    coll.add([folder], config=INLINE)
    (item,) = coll.items("error")
    assert (Path(item.path).name, item.reason) == ("dangling.png", "missing")
    assert "symbolic link" in item.error


# -- 6. every error reaching the CLI is one line; usage errors exit 2 -------------------------


def one_line_error(capsys, argv, code=1) -> str:
    assert main(argv) == code
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    return captured.err


def test_cli_errors_are_one_line(indexed, tmp_path, capsys):
    coll_path, _ = indexed
    c = str(coll_path)
    assert "missing.png" in one_line_error(capsys, ["search", "--image", "missing.png", "-c", c])
    for argv in (["search", "-c", c], ["search", "red", "-c", c, "--condition", "colour"]):
        assert "--help" in one_line_error(capsys, argv, code=2)
    for argv in (["index", "x", "-c", c, "--batch-size", "0"], ["search", "red", "-c", c, "-k", "0"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert "too small" in capsys.readouterr().err
    broken = tmp_path / "garbage.sc"
    shutil.copytree(coll_path, broken)
    with open(broken / "collection.sqlite", "r+b") as handle:
        handle.write(b"this is not a SQLite database header at all")
    for argv in (["status", "-c", str(broken)], ["search", "red", "-c", str(broken)]):
        assert "collection.sqlite" in one_line_error(capsys, argv)


def test_catalog_busy_under_a_writer_is_one_line(indexed, capsys, monkeypatch):
    """`status` while the WAL is deleted under a writer fails with SQLite's 'disk I/O error'."""
    coll_path, _ = indexed
    real = sqlite3.connect

    def failing(*args, **kwargs):
        db = real(*args, **kwargs)

        class Flaky:
            def execute(self, sql, *rest):
                if sql.startswith("SELECT value FROM meta"):
                    raise sqlite3.OperationalError("disk I/O error")
                return db.execute(sql, *rest)

            def __getattr__(self, name):
                return getattr(db, name)

        return Flaky()

    monkeypatch.setattr(sqlite3, "connect", failing)
    err = one_line_error(capsys, ["status", "-c", str(coll_path)])
    assert "disk I/O error" in err and "try again" in err


def test_unexpected_errors_are_one_line_too(indexed, capsys, monkeypatch):
    coll_path, _ = indexed
    monkeypatch.setattr(Collection, "counts", lambda self: {}["boom"])
    err = one_line_error(capsys, ["status", "-c", str(coll_path)])
    assert "KeyError" in err and "SHARPCLIP_DEBUG" in err


def test_help_says_what_the_tool_does(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "The library raises" not in out
    assert "Image search" in out and "sharpclip index" in out and "sharpclip check" in out


# -- 7. damaged caches are recomputed ----------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage-npy", "garbage-json", "same-shape"])
def test_damaged_cache_is_recomputed(indexed, model, damage):
    coll_path, paths = indexed
    with Collection.open(coll_path, model) as coll:
        before = [(h.path, h.score) for h in coll.search(like=paths[0], k=5,
                                                         condition="colour").hits]
    cache = sorted((coll_path / "cache").glob("condition-*.npy"))
    gallery = next(f for f in cache if not f.stem.endswith("-w"))
    if damage == "garbage-npy":
        gallery.write_bytes(b"\x93NUMPY garbage")
    elif damage == "garbage-json":
        gallery.with_suffix(".json").write_text("{not json")
    else:  # a tampered array of the same shape: scores above 1 before checksums
        array = np.load(gallery)
        np.save(gallery, array * 1.62)
    with Collection.open(coll_path, model) as coll:
        after = [(h.path, h.score) for h in coll.search(like=paths[0], k=5,
                                                        condition="colour").hits]
    assert [p for p, _ in after] == [p for p, _ in before]
    np.testing.assert_allclose([s for _, s in after], [s for _, s in before], atol=1e-5)
    assert max(s for _, s in after) <= 1.0 + 1e-5


# -- 8. the smaller ones -------------------------------------------------------------------------


def test_two_index_runs_creating_one_collection(tmp_path):
    """Both succeed: the loser opens the winner's collection; no staging folder is left."""
    write_scenes(tmp_path / "d", 6, seed=28)
    command = [sys.executable, "-m", "sharpclip.cli", "index", str(tmp_path / "d"), "-c",
               str(tmp_path / "c.sc"), "--workers", "0", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    results = [(run.wait(), run.stderr.read()) for run in runs]
    for code, err in results:  # the second writer may also be told to wait for the first
        assert code == 0 or ("another sharpclip process" in err and err.count("\n") == 1), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.sc", "d"]
    with Collection.open(tmp_path / "c.sc") as coll:
        assert coll.counts()["ok"] == 6


def test_create_race_loser_cleans_up(tmp_path, model, monkeypatch):
    target = tmp_path / "c.sc"
    real_rename = os.rename
    raced = []

    def someone_else_first(src, dst):
        if not raced:  # another process's create lands between our checks and our rename
            raced.append(True)
            Collection.create(dst, model).close()
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", someone_else_first)
    with pytest.raises(CollectionError, match="another process"):
        Collection.create(target, model)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.sc"]
    Collection.open_or_create(target, model).close()


def test_broken_checkpoint_config_is_named(tmp_path, capsys):
    from tiny_checkpoints import save_tiny_clip

    checkpoint = save_tiny_clip(tmp_path / "ckpt")
    (checkpoint / "config.json").write_text("{broken")
    write_scenes(tmp_path / "d", 1, seed=29)
    err = one_line_error(capsys, ["index", str(tmp_path / "d"), "-c", str(tmp_path / "c.sc"),
                                  "--model", str(checkpoint), "-q"])
    assert "config.json" in err


def test_batch_size_zero_is_refused_by_the_library():
    with pytest.raises(ValueError, match="batch_size"):
        IndexConfig(batch_size=0)


def test_indexing_a_missing_path_creates_no_collection(tmp_path, capsys):
    err = one_line_error(capsys, ["index", str(tmp_path / "nope"), "-c", str(tmp_path / "c.sc")])
    assert "nope" in err and not (tmp_path / "c.sc").exists()


def test_newline_in_a_file_name_stays_on_one_line(tmp_path, model, capsys):
    folder = tmp_path / "d"
    paths = write_scenes(folder, 2, seed=30)
    odd = folder / "two\nlines.png"
    paths[0].rename(odd)
    c = str(tmp_path / "c.sc")
    assert main(["index", str(folder), "-c", c, "-q"]) == 0
    capsys.readouterr()
    assert main(["search", "a shape", "-c", c, "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and any("two\\nlines.png" in line for line in lines)
    assert main(["search", "--like", str(odd), "-c", c, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["path"] == str(odd)


def test_status_names_each_bad_path_once_and_lists_unlistable_folders(tmp_path, model, capsys,
                                                                        monkeypatch):
    folder = tmp_path / "d"
    write_scenes(folder, 2, seed=31)
    (folder / "bad.jpg").write_bytes(b"not an image")
    (folder / "locked").mkdir()
    real_scandir = os.scandir

    def refuse_locked(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    c = str(tmp_path / "c.sc")
    assert main(["index", str(folder), "-c", c, "-q"]) == 0
    capsys.readouterr()
    assert main(["status", "-c", c]) == 0
    out = capsys.readouterr().out
    assert out.count(str(folder / "bad.jpg")) == 1
    assert "locked" in out and "cannot list" in out
    monkeypatch.undo()  # readable again: the entry goes away
    assert main(["index", str(folder), "-c", c, "-q"]) == 0
    capsys.readouterr()
    assert main(["status", "-c", c]) == 0
    assert "locked" not in capsys.readouterr().out


def test_bundled_model_on_photos_says_so_once(tmp_path, capsys):
    from PIL import Image
    from skimage import data as skdata

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(skdata, name)()).save(folder / f"{name}.jpg")
    assert main(["index", str(folder), "-c", str(tmp_path / "c.sc"), "-q"]) == 0
    err = capsys.readouterr().err
    assert err.count("bundled model") == 1 and "--model" in err
    write_scenes(tmp_path / "scenes", 2, seed=32)
    assert main(["index", str(tmp_path / "scenes"), "-c", str(tmp_path / "s.sc"), "-q"]) == 0
    assert "bundled model" not in capsys.readouterr().err


# -- the ANN index is the writer's job ---------------------------------------------------------


def test_index_builds_the_ann_index_and_search_never_writes_it(tmp_path, model, monkeypatch):
    monkeypatch.setattr("sharpclip.store.collection.SearchConfig",
                        lambda: SearchConfig(ann_threshold=5))
    paths = write_scenes(tmp_path / "d", 8, seed=33)
    coll = Collection.create(tmp_path / "c.sc", model)
    coll.add([tmp_path / "d"], config=INLINE)
    index_file = tmp_path / "c.sc" / "index" / "image.faiss"
    assert index_file.exists()
    stamp = index_file.stat().st_mtime_ns
    extra = write_scenes(tmp_path / "d", 2, seed=34, prefix="x")
    with Collection.open(coll.path) as other, other.writing():
        other.commit([], None)  # a generation bump alone
    assert coll.search(image=paths[0], k=1).hits[0].path == str(paths[0])
    assert index_file.stat().st_mtime_ns == stamp
    coll.add([tmp_path / "d"], config=INLINE)
    assert index_file.stat().st_mtime_ns != stamp
    assert coll.search(image=extra[1], k=1).hits[0].path == str(extra[1])


def test_output_piped_into_head_is_not_an_error(indexed):
    """`sharpclip search ... | head -1`: the reader has gone when the output is written."""
    coll_path, _ = indexed
    read, write = os.pipe()
    os.close(read)  # as `head` does once it has its line: every write now fails with EPIPE
    run = subprocess.run([sys.executable, "-m", "sharpclip.cli", "search", "a shape", "-c",
                          str(coll_path)], stdout=write, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    os.close(write)
    assert (run.returncode, run.stderr) == (0, "")
