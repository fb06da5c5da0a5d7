"""ModelStore: install, activate, rollback, prune, seed, and recovery after a crash at each step."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from agent.errors import DeployError
from agent.models.store import MANIFEST_NAME, InstalledModel, ModelStore, folder_name
from agent.models.versions import VersionFloor, version_key
from bench.support.deploy_helpers import write_bundle


def fake_model(version: str) -> bytes:
    """The store does not load models, so any bytes do here."""
    return (f"model {version} ".encode()) * 100


def stage(store: ModelStore, tmp: Path, version: str) -> Path:
    """Build a staged folder as the receiver leaves it before ``install``."""
    src = write_bundle(tmp / f"src-{version}", fake_model(version), version=version)
    staged = store.new_staging(f"push-{version}")
    for p in src.parent.iterdir():
        shutil.copyfile(p, staged / p.name)
    return staged


def install_active(store: ModelStore, tmp: Path, version: str) -> InstalledModel:
    installed = store.install(stage(store, tmp, version))
    store.activate(installed)
    return installed


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "state", keep=2)


def test_empty_store_has_no_active_model(store: ModelStore) -> None:
    assert store.recover() is None
    assert store.active() is None and store.previous() is None and store.list() == []


def test_install_activate_previous_and_rollback(store: ModelStore, tmp_path: Path) -> None:
    v1 = install_active(store, tmp_path, "1")
    v2 = install_active(store, tmp_path, "2")
    assert store.active() == v2
    assert v2.folder.name == folder_name(v2.manifest)
    assert v2.model_path.read_bytes() == fake_model("2")
    assert store.previous() == v1
    back = store.rollback("smoke test failed")
    assert back == v1 and store.active() == v1
    last = store.events()[-1]
    assert last["event"] == "rollback" and last["reason"] == "smoke test failed"
    assert last["from"] == v2.key and last["to"] == v1.key
    with pytest.raises(DeployError, match="no previous model version"):
        store.rollback()


def test_install_refuses_a_staged_folder_with_bad_sha(store: ModelStore, tmp_path: Path) -> None:
    staged = stage(store, tmp_path, "1")
    (staged / "tiny.tflite").write_bytes(fake_model("X"))
    with pytest.raises(DeployError, match=r"sha256 of tiny\.tflite"):
        store.install(staged)
    assert store.list() == []


def test_installing_the_same_version_twice_reuses_the_folder(store: ModelStore,
                                                             tmp_path: Path) -> None:
    a = store.install(stage(store, tmp_path, "1"))
    b = store.install(stage(store, tmp_path, "1"))
    assert a == b and len(store.list()) == 1
    assert not any(store.staging_dir.iterdir())


def test_prune_keeps_newest_and_active(store: ModelStore, tmp_path: Path) -> None:
    for v in "1234":
        install_active(store, tmp_path, v)
    store.activate(store.list()[0])  # operator pinned v1 again
    removed = store.prune()
    assert {m.manifest.version for m in store.list()} == {"1", "4"}
    assert len(removed) == 2


def test_seed_installs_once_and_activates_only_when_nothing_is_active(store: ModelStore,
                                                                      tmp_path: Path) -> None:
    m1 = write_bundle(tmp_path / "cfg1", fake_model("1"), version="1")
    m2 = write_bundle(tmp_path / "cfg2", fake_model("2"), version="2")
    first = store.seed(m1)
    assert store.seed(m1) == first and store.active() == first
    second = store.seed(m2)
    assert store.active() == first and second in store.list()


def test_clean_staging_removes_only_old_folders(store: ModelStore, tmp_path: Path) -> None:
    old = stage(store, tmp_path, "1")
    stage(store, tmp_path, "2")
    past = time.time() - 3600
    for p in [old, *old.iterdir()]:
        os.utime(p, (past, past))
    assert store.clean_staging(600) == [old.name]


# --------------------------------------------------------------------------- crash points


def test_crash_while_receiving_leaves_old_model(store: ModelStore, tmp_path: Path) -> None:
    v1 = install_active(store, tmp_path, "1")
    part = store.new_staging("push-2") / ".model.part"
    part.write_bytes(b"\0" * 10)
    assert store.recover() == v1
    assert not any(store.staging_dir.iterdir())


def test_crash_after_install_before_activate_keeps_old_active(store: ModelStore,
                                                               tmp_path: Path) -> None:
    v1 = install_active(store, tmp_path, "1")
    v2 = store.install(stage(store, tmp_path, "2"))
    assert ModelStore(store.root).recover() == v1
    assert v2 in store.list()


def test_crash_during_pointer_write_keeps_old_pointer(store: ModelStore, tmp_path: Path) -> None:
    v1 = install_active(store, tmp_path, "1")
    tmp = store.root / f".{store.pointer_path.name}.tmp-4242"
    tmp.write_text('{"active": "half')
    assert store.recover() == v1
    assert not tmp.exists()


def test_crash_during_prune_leaves_no_half_version(store: ModelStore, tmp_path: Path) -> None:
    v1 = install_active(store, tmp_path, "1")
    trash = store.versions_dir / ".trash-tiny-0-deadbeef-1234"
    trash.mkdir()
    (trash / "tiny.tflite").write_bytes(b"half")
    (v1.folder / f".{MANIFEST_NAME}.tmp-99").write_text("{")
    assert store.recover() == v1
    assert [p.name for p in store.versions_dir.iterdir()] == [v1.key]
    assert sorted(p.name for p in v1.folder.iterdir()) == [MANIFEST_NAME, "tiny.tflite"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete_file", "delete_folder"])
def test_damaged_active_falls_back_to_previous(store: ModelStore, tmp_path: Path,
                                               damage: str) -> None:
    v1 = install_active(store, tmp_path, "1")
    v2 = install_active(store, tmp_path, "2")
    data = bytearray(v2.model_path.read_bytes())
    if damage == "flip":
        data[5] ^= 0xFF
        v2.model_path.write_bytes(bytes(data))
    elif damage == "truncate":
        v2.model_path.write_bytes(bytes(data[:10]))
    elif damage == "delete_file":
        v2.model_path.unlink()
    else:
        shutil.rmtree(v2.folder)
    recovered = ModelStore(store.root).recover()
    assert recovered == v1 and store.active() == v1
    assert store.events()[-1]["reason"].startswith(f"active version {v2.key}")


def test_unreadable_pointer_falls_back_to_newest_whole_version(store: ModelStore,
                                                               tmp_path: Path) -> None:
    install_active(store, tmp_path, "1")
    time.sleep(0.01)
    v2 = install_active(store, tmp_path, "2")
    store.pointer_path.write_text("not json")
    assert store.recover() == v2
    assert json.loads(store.pointer_path.read_text())["active"] == v2.key


def test_everything_damaged_gives_no_model(store: ModelStore, tmp_path: Path) -> None:
    v1 = install_active(store, tmp_path, "1")
    v1.model_path.write_bytes(b"x")
    assert store.recover() is None


def test_choose_at_start_keeps_a_pushed_model_until_the_config_names_a_new_one(
        store: ModelStore, tmp_path: Path) -> None:
    cfg1 = write_bundle(tmp_path / "cfg1", fake_model("1"), version="1")
    first = store.choose_at_start(cfg1)
    assert store.active() == first and first.manifest.version == "1"
    pushed = install_active(store, tmp_path, "2")
    assert store.choose_at_start(cfg1) == pushed  # a restart keeps the pushed model
    cfg3 = write_bundle(tmp_path / "cfg3", fake_model("3"), version="3")
    third = store.choose_at_start(cfg3)  # the operator changed the config: it wins
    assert third.manifest.version == "3" and store.active() == third
    assert store.events()[-1]["reason"] == f"config names {cfg3}"
    assert store.choose_at_start(cfg1) == third  # a model the store has seen does not


def test_choose_at_start_cleans_up_what_a_crash_left(store: ModelStore, tmp_path: Path) -> None:
    cfg1 = write_bundle(tmp_path / "cfg1", fake_model("1"), version="1")
    store.choose_at_start(cfg1)
    leftover = store.new_staging("push-half")
    (leftover / "part").write_bytes(b"x")
    store.choose_at_start(cfg1)
    assert not leftover.exists()


# --------------------------------------------------------------------------- version order


@pytest.mark.parametrize("low, high", [
    ("1.9", "1.10"), ("1.10", "2"), ("2", "2.0.1"), ("1.5", "2.0.0"), ("v2", "v10"),
    ("1.0a", "1.0.1"), ("9", "10"),
])
def test_versions_compare_naturally(low: str, high: str) -> None:
    assert version_key(low) < version_key(high)


def test_the_version_floor_persists_and_only_rises(tmp_path: Path) -> None:
    floor = VersionFloor(tmp_path)
    assert floor.get() is None
    floor.note("3")
    floor.note("2")
    assert VersionFloor(tmp_path).get() == "3"
    floor.check("3", rollback=False, others=[])
    floor.check("1", rollback=True, others=[])
    with pytest.raises(ValueError, match="lower than 3"):
        floor.check("2.9", rollback=False, others=["1"])
    with pytest.raises(ValueError, match="lower than 4"):
        floor.check("3.5", rollback=False, others=["4"])
    (tmp_path / "highest_version.json").write_text("{broken")
    assert VersionFloor(tmp_path).get() is None  # the installed versions still set the floor


def test_remove_deletes_an_inactive_version_and_refuses_the_active(store: ModelStore,
                                                                   tmp_path: Path) -> None:
    v1 = install_active(store, tmp_path, "1")
    v2 = store.install(stage(store, tmp_path, "2"))
    store.remove(v2)
    assert [m.key for m in store.list()] == [v1.key]
    with pytest.raises(DeployError, match="is the active version"):
        store.remove(v1)
