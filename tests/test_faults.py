"""The fault-injection battery (the way SQLite tests itself).

1. Crash points: the writer kills itself with SIGKILL at each named step of ``index``, ``remove``,
   ``compact`` and ``check --repair`` (``SHARPCLIP_CRASH_AT``, see ``store.faults``).
2. Random kills: ``kill -9`` at a random instant of a random command, many times over one
   collection whose folder keeps changing (slow: ``pytest -m slow tests/test_faults.py``).
3. Damage at rest: truncated, deleted and garbage vector files, caches, index files and database
   headers.

After each fault the collection must be correct (after the next ``index`` or ``check --repair``:
every file exactly one live item whose vector is its own embedding, and ``check`` clean) or give a
one-line refusal with the fix, and no search in between may return a wrong file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scenes import write_scenes
from sharpclip.cli import main
from sharpclip.collection import Collection
from sharpclip.data import shapes
from sharpclip.data.imagefiles import content_hash, load_rgb
from sharpclip.ingest import IndexConfig
from sharpclip.repair import repair_collection
from sharpclip.store.collection import CollectionError
from sharpclip.store.faults import ENV
from sharpclip.store.integrity import check_collection
from sharpclip.store.search_index import SearchConfig

WORKER = Path(__file__).with_name("fault_worker.py")
INLINE = IndexConfig(workers=0, batch_size=4, progress=False)
RANDOM_TRIALS = int(os.environ.get("SHARPCLIP_FAULT_TRIALS", "60"))


class Expected:
    """Embeddings of the files as they are on disk, computed once per content."""

    def __init__(self, model):
        self.model = model
        self.by_hash: dict[str, np.ndarray] = {}

    def __call__(self, path: Path) -> np.ndarray:
        digest = content_hash(path)
        if digest not in self.by_hash:
            self.by_hash[digest] = self.model.encode_images([load_rgb(path)])[0]
        return self.by_hash[digest]


def assert_correct(coll_path: Path, folder: Path, expected: Expected) -> None:
    """Every image in ``folder`` is exactly one live item holding its own embedding, no other
    item is live, ``check`` finds no error or warning, and each file's own image query finds it."""
    files = sorted(folder.glob("*.png"))
    with Collection.open(coll_path) as coll:
        live = {i.path: i for i in coll.items("ok")}
        assert sorted(live) == sorted(map(str, files))
        rows, _ = coll.live_rows()
        assert len(set(rows.tolist())) == len(rows) == len(files)
        vectors = coll.vectors()
        for path in files:
            np.testing.assert_allclose(vectors[live[str(path)].row], expected(path), atol=1e-5)
        for path in files[:3]:
            hit = coll.search(image=path, k=1).hits[0]
            assert hit.score == pytest.approx(1.0, abs=1e-4)
            np.testing.assert_allclose(expected(Path(hit.path)), expected(path), atol=1e-5)
    report = check_collection(coll_path)
    assert report.clean, report.problems


def run_worker(argv: list[str], crash_at: str | None = None, kill_after: float | None = None,
               timeout: float = 300) -> tuple[int, float | None]:
    """Run one command in a child; kill -9 it ``kill_after`` seconds after it is ready.
    Returns its exit status and, when it finished before any kill, how long the command took."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(ENV, None)
    if crash_at:
        env[ENV] = crash_at
    child = subprocess.Popen([sys.executable, str(WORKER), *argv], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout.readline().strip() == "ready"
    if kill_after is not None:
        time.sleep(kill_after)
        child.send_signal(signal.SIGKILL)
    child.wait(timeout)
    out, err = child.stdout.read(), child.stderr.read()
    assert child.returncode in (0, -signal.SIGKILL), err
    done = [line.split()[1] for line in out.splitlines() if line.startswith("done ")]
    return child.returncode, float(done[0]) if done else None


def killed(argv: list[str], crash_at: str) -> bool:
    """Whether the command died at the crash point (SIGKILL before it finished)."""
    code, took = run_worker(argv, crash_at=crash_at)
    return code == -signal.SIGKILL and took is None


def index_argv(folder: Path, coll_path: Path) -> list[str]:
    return ["index", str(folder), "-c", str(coll_path), "--batch-size", "2", "--workers", "0", "-q"]


def churn_folder(folder: Path, rng: np.random.Generator, step: int) -> None:
    """Add two scenes, change one, delete one (a folder that keeps changing between runs)."""
    write_scenes(folder, 2, seed=1000 + step, prefix=f"n{step:03d}-")
    files = sorted(folder.glob("*.png"))
    changed = files[int(rng.integers(len(files)))]
    shapes.render(shapes.random_spec(rng, "single"), 64, rng).save(changed)
    os.utime(changed, ns=(0, 10**18 + step))
    files = sorted(folder.glob("*.png"))
    files[int(rng.integers(len(files)))].unlink()


def resume(coll_path: Path, folder: Path) -> None:
    """What a user does after a crash: index again, then `check --repair` if check is unhappy."""
    with Collection.open(coll_path) as coll:
        coll.add([folder], config=INLINE)
    found = check_collection(coll_path)
    if not found.clean:
        assert repair_collection(coll_path, found, INLINE).after.clean


# -- 1. crash points ---------------------------------------------------------------------------


@pytest.fixture
def started(tmp_path, model):
    """A collection of 10 scenes and a folder that has changed since (4 more, 1 changed)."""
    folder = tmp_path / "in"
    write_scenes(folder, 10, seed=51)
    coll_path = tmp_path / "c.sc"
    with Collection.create(coll_path, model) as coll:
        coll.add([folder], config=INLINE)
    write_scenes(folder, 4, seed=52, prefix="late")
    churn_folder(folder, np.random.default_rng(0), 0)
    return coll_path, folder, Expected(model)


INDEX_POINTS = ["commit.vectors_appended:1", "commit.vectors_appended:3", "commit.committed:2"]


@pytest.mark.parametrize("point", INDEX_POINTS)
def test_crash_inside_index(started, point):
    coll_path, folder, expected = started
    assert killed(index_argv(folder, coll_path), point)
    resume(coll_path, folder)
    assert_correct(coll_path, folder, expected)


REGION_POINTS = ["commit.vectors_appended:2", "commit.vectors_appended:4", "commit.committed:2"]


@pytest.mark.parametrize("point", REGION_POINTS)
def test_crash_inside_index_with_regions(started, model, point):
    """kill -9 between the image and the regions appends of a batch, or after a commit: the next
    run keeps every committed item, duplicates none, and completes every item's regions."""
    from sharpclip.data.regions import RegionGrid, region_crops
    from sharpclip.store.collection import REGIONS_SET

    coll_path, folder, expected = started
    assert killed(index_argv(folder, coll_path) + ["--regions", "whole+2x2"], point)
    resume(coll_path, folder)
    assert_correct(coll_path, folder, expected)
    grid = RegionGrid("whole+2x2")
    with Collection.open(coll_path) as coll:
        assert coll.items_lacking(REGIONS_SET) == []
        vectors = coll.read_vectors(REGIONS_SET)[1]
        live = coll.snapshot(REGIONS_SET)
        assert len(live.live_rows) == len(set(live.live_rows.tolist())) == len(grid) * coll.counts()["ok"]
        for item in coll.items("ok")[:5]:
            (start,), (count,) = coll.rows_for_items(REGIONS_SET, [item.id])
            np.testing.assert_allclose(vectors[start:start + count],
                                       model.encode_images(region_crops(load_rgb(item.path), grid)),
                                       atol=1e-5)


def test_crash_inside_remove(started):
    coll_path, folder, expected = started
    victim = min(folder.glob("s*.png"))
    argv = ["remove", str(victim), "-c", str(coll_path)]
    assert killed(argv, "remove.committed")
    with Collection.open(coll_path) as coll:
        assert coll.item(victim) is None  # the kill came after the commit
    victim.unlink()
    resume(coll_path, folder)
    assert_correct(coll_path, folder, expected)


COMPACT_POINTS = ["compact.vectors_written", "compact.index_written", "compact.committed"]


@pytest.mark.parametrize("point", COMPACT_POINTS)
def test_crash_inside_compact_leaves_the_old_or_the_new(started, point, monkeypatch):
    coll_path, folder, expected = started
    if point == "compact.index_written":  # only reached when the collection uses an index
        monkeypatch.setenv("SHARPCLIP_TEST_ANN_THRESHOLD", "1")
    with Collection.open(coll_path) as coll:
        coll.add([folder], config=INLINE)  # leaves orphaned rows for compact to drop
        old_rows, live = coll.vectors().shape[0], coll.counts()["ok"]
        assert old_rows > live
    assert killed(["compact", "-c", str(coll_path)], point)
    with Collection.open(coll_path) as coll:
        rows = coll.vectors().shape[0]
    assert rows == (live if point == "compact.committed" else old_rows)
    resume(coll_path, folder)
    assert_correct(coll_path, folder, expected)
    assert len(list((coll_path / "vectors").iterdir())) == 1  # the other file was cleaned up


def test_crash_inside_repair(started, model):
    coll_path, folder, expected = started
    with Collection.open(coll_path) as coll:
        coll.add([folder], config=INLINE)
    os.truncate(coll_path / "vectors" / "image.f32", 3 * model.dim * 4)
    argv = ["check", "-c", str(coll_path), "--repair", "--workers", "0"]
    assert killed(argv, "commit.vectors_appended:1")
    assert run_worker(argv)[0] == 0
    assert_correct(coll_path, folder, expected)


def test_crash_after_repair_marked_items_lost(started, model):
    coll_path, folder, expected = started
    with Collection.open(coll_path) as coll:
        coll.add([folder], config=INLINE)
    with open(coll_path / "vectors" / "image.f32", "r+b") as handle:
        handle.seek(5 * model.dim * 4)
        handle.write(b"\x7f" * 16)
    argv = ["check", "-c", str(coll_path), "--repair", "--workers", "0"]
    assert killed(argv, "repair.marked")
    with Collection.open(coll_path) as coll:  # marked lost, not yet re-embedded: never returned
        lost = {i.path for i in coll.items("error") if i.reason == "vectors_lost"}
        assert len(lost) == 2  # the batch of 2 holding the damaged row
        assert not lost & {h.path for h in coll.search(text="a shape", k=20).hits}
    resume(coll_path, folder)
    assert_correct(coll_path, folder, expected)


# -- 2. random kills -------------------------------------------------------------------------


def random_kill_trials(tmp_path: Path, model, trials: int, seed: int) -> dict[str, int]:
    """``trials`` kill -9s at random instants of random commands; returns, per command, how many
    kills landed before the command finished (the delay is drawn up to 1.2 times the command's
    own duration, measured on its last unkilled run)."""
    rng = np.random.default_rng(seed)
    expected = Expected(model)
    folder, coll_path = tmp_path / "in", tmp_path / "c.sc"
    write_scenes(folder, 16, seed=seed)
    with Collection.create(coll_path, model) as coll:
        coll.add([folder], config=INLINE)
    commands = ["index", "remove", "compact", "check --repair"]
    kills = dict.fromkeys(commands, 0)
    duration = dict.fromkeys(commands, None)
    for step in range(trials + len(commands)):
        churn_folder(folder, rng, step + 1)
        calibrating = step < len(commands)  # each command once unkilled, to time it
        command = commands[step] if calibrating else commands[int(rng.integers(4))]
        if command == "index":
            argv = index_argv(folder, coll_path)
        elif command == "remove":
            files = sorted(folder.glob("*.png"))
            victims = [str(f) for f in files[:int(rng.integers(1, 4))]]
            argv = ["remove", *victims, "-c", str(coll_path)]
        elif command == "compact":
            argv = ["compact", "-c", str(coll_path)]
        else:  # damage first, so that the repair has work to do
            with Collection.open(coll_path) as coll:
                coll.add([folder], config=INLINE)
            file = next((coll_path / "vectors").glob("*.f32"))
            os.truncate(file, int(rng.integers(0, file.stat().st_size // (model.dim * 4))) *
                        model.dim * 4)
            argv = ["check", "-c", str(coll_path), "--repair", "--workers", "0"]
        delay = None if calibrating else float(rng.uniform(0.0, 1.2 * duration[command]))
        _, took = run_worker(argv, kill_after=delay)
        if took is None:
            kills[command] += 1
        else:
            duration[command] = took
        if command == "remove":
            for victim in argv[1:-2]:
                Path(victim).unlink()
        resume(coll_path, folder)
        assert_correct(coll_path, folder, expected)
    return kills


def test_random_kills_short(tmp_path, model):
    random_kill_trials(tmp_path, model, trials=1, seed=7)


@pytest.mark.slow
def test_random_kills_long(tmp_path, model, capsys):
    kills = random_kill_trials(tmp_path, model, trials=RANDOM_TRIALS, seed=0)
    with capsys.disabled():
        print(f"\nrandom kill -9 trials: {RANDOM_TRIALS} runs, killed mid-command {kills}")
    assert sum(kills.values()) >= RANDOM_TRIALS // 2  # most kills land inside the command


# -- 3. damage at rest -----------------------------------------------------------------------


def damage(file: Path, how: str) -> None:
    if how == "truncated":
        os.truncate(file, file.stat().st_size // 2)
    elif how == "deleted":
        file.unlink()
    else:  # garbage: same length, other bytes
        size = file.stat().st_size
        with open(file, "r+b") as handle:
            handle.seek(size // 3)
            handle.write(bytes(range(256)) * max(1, size // 3 // 256 + 1))
            handle.truncate(size)


TARGETS = {"vectors": "vectors/image.f32", "cache": "cache/GALLERY", "index": "index/image.faiss",
           "catalog": "collection.sqlite"}


@pytest.mark.parametrize("how", ["truncated", "deleted", "garbage"])
@pytest.mark.parametrize("target", list(TARGETS))
def test_damage_at_rest_is_found_and_never_gives_a_wrong_hit(tmp_path, model, target, how,
                                                             monkeypatch, capsys):
    monkeypatch.setattr("sharpclip.store.collection.SearchConfig",
                        lambda: SearchConfig(ann_threshold=4))
    monkeypatch.setattr("sharpclip.store.integrity.Collection.uses_ann",
                        staticmethod(lambda live, exact, config=None: not exact and live >= 4))
    folder, coll_path = tmp_path / "in", tmp_path / "c.sc"
    paths = write_scenes(folder, 12, seed=61)
    expected = Expected(model)
    with Collection.create(coll_path, model) as coll:
        coll.add([folder], config=INLINE)
        coll.search(like=paths[0], k=3, condition="colour")
    name = TARGETS[target]
    if target == "cache":
        name = next(f for f in (coll_path / "cache").glob("*.npy") if not f.stem.endswith("-w"))
    damage(coll_path / name, how)
    if target == "catalog" and how == "deleted":  # not a collection any more: named as such
        assert main(["search", "a shape", "-c", str(coll_path)]) == 1
        assert "not a sharpclip collection" in capsys.readouterr().err
        return
    found = check_collection(coll_path)  # before a search recomputes a damaged cache
    damaged = {p for problem in found.problems for p in problem.paths}
    for path in paths:  # a search answers right, or refuses in one line; never a wrong file
        code = main(["search", "--image", str(path), "-c", str(coll_path), "-k", "3"])
        out, err = capsys.readouterr()
        if code == 0:  # each hit's score is its file's true similarity to the query
            hits = [line.split() for line in out.splitlines()]
            for _, score, hit in hits:
                assert float(score) == pytest.approx(expected(Path(hit)) @ expected(path),
                                                     abs=1e-3), (out, err)
            assert str(path) in damaged or hits[0][2] == str(path), (out, err)
        else:
            assert err.count("\n") == 1 and ("check" in err or "backup" in err), err
        code = main(["search", "--like", str(path), "-c", str(coll_path), "-k", "1",
                     "--condition", "colour"])
        out, err = capsys.readouterr()
        if code == 0 and out:
            hit = Path(out.split()[-1])
            np.testing.assert_allclose(expected(hit) @ expected(path), 1.0, atol=1e-4)
        else:
            assert err.count("\n") == 1 and ("check" in err or "backup" in err), err
    harmless = target == "cache" and how == "deleted"  # recomputed on the next search
    assert found.clean == harmless, found.problems
    if target == "catalog":
        with pytest.raises(CollectionError, match="backup"):
            repair_collection(coll_path, found, INLINE)
        return
    if not harmless:
        assert repair_collection(coll_path, found, INLINE).after.clean
    assert_correct(coll_path, folder, expected)
    shutil.rmtree(coll_path)
