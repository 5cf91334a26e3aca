"""Atomic folder replacement and the adapter registry's read side."""

from __future__ import annotations

import json

import pytest

from ragtune.core import atomic
from ragtune.core.atomic import clean_stale, replace_dir, staging_dir, write_json_atomic
from ragtune.core.errors import InvalidInput, UnknownAdapter
from ragtune.core.registry import clean_registry, get_adapter, list_adapters, publish, remove


def test_replace_dir_swaps_whole_folders(tmp_path):
    dest = tmp_path / "x"
    dest.mkdir()
    (dest / "old").write_text("1")
    with staging_dir(tmp_path, "t-") as tmp:
        (tmp / "new").write_text("2")
        replace_dir(tmp, dest)
    assert (dest / "new").is_file() and not (dest / "old").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_replace_dir_without_an_exchange_and_a_crash_between_its_renames(tmp_path, monkeypatch):
    """Where the OS cannot exchange two folders in one step, the old one goes aside first; a
    crash right then (dest missing) is repaired: the old folder comes back, never deleted."""
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    dest = tmp_path / "last"
    dest.mkdir()
    (dest / "state.json").write_text("3")
    with staging_dir(tmp_path, "t-") as tmp:
        (tmp / "state.json").write_text("4")
        replace_dir(tmp, dest)
    assert (dest / "state.json").read_text() == "4"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]
    # the crash: renamed aside, the new one never moved in
    dest.rename(tmp_path / f"{atomic.ASIDE}last-0123abcd")
    (tmp_path / ".tmp-ckpt-deadbeef").mkdir()  # its staging folder, half written
    assert clean_stale(tmp_path) == 1  # the staging folder; the old one is restored
    assert (dest / "state.json").read_text() == "4"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]
    # and the next replacement repairs it too, before it starts
    dest.rename(tmp_path / f"{atomic.ASIDE}last-0123abcd")
    with staging_dir(tmp_path, "t-") as tmp:
        (tmp / "state.json").write_text("5")
        replace_dir(tmp, dest)
    assert (dest / "state.json").read_text() == "5"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_staging_dir_is_removed_on_error(tmp_path):
    with pytest.raises(RuntimeError), staging_dir(tmp_path) as tmp:
        (tmp / "f").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_write_json_atomic_and_clean_stale(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"b": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"b": 1}
    (tmp_path / ".tmp-left").mkdir()
    assert clean_stale(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_registry_lists_only_complete_adapters(tiny_settings):
    root = tiny_settings.adapters_dir
    half = root / "half"
    half.mkdir(parents=True)
    (half / "adapter_config.json").write_text("{}")  # no manifest: a killed run
    staged = root / ".tmp-good"
    staged.mkdir()
    (staged / "adapter_config.json").write_text("{}")
    (staged / "manifest.json").write_text(json.dumps({"base_model": "m", "method": "lora"}))
    info = publish(tiny_settings, staged, "good")
    assert [a.name for a in list_adapters(tiny_settings)] == ["good"]
    assert info.base_model == "m" and info.method == "lora"
    with pytest.raises(UnknownAdapter):
        get_adapter(tiny_settings, "half")
    (root / ".tmp-stale").mkdir()
    assert clean_registry(tiny_settings) == 1
    remove(tiny_settings, "good")
    assert list_adapters(tiny_settings) == []


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x" * 65, "a b"])
def test_unsafe_adapter_names_are_refused(tiny_settings, name):
    with pytest.raises(InvalidInput):
        get_adapter(tiny_settings, name)


def test_cleaning_waits_for_a_writer_and_never_takes_its_staging_folder(tiny_settings):
    """One registry writer at a time (across processes: flock): a clean that starts while
    another writer stages its adapter waits, and then finds nothing of it to delete."""
    import threading
    import time

    from ragtune.core.registry import registry_writer

    root = tiny_settings.adapters_dir
    staged, published = threading.Event(), threading.Event()

    def writer() -> None:
        with registry_writer(tiny_settings), staging_dir(root, "slow-") as tmp:
            (tmp / "adapter_config.json").write_text("{}")
            (tmp / "manifest.json").write_text(json.dumps({"base_model": "m", "method": "lora"}))
            staged.set()
            time.sleep(0.3)
            publish(tiny_settings, tmp, "slow")
            published.set()  # still holding the lock

    thread = threading.Thread(target=writer)
    thread.start()
    staged.wait(10)
    assert clean_registry(tiny_settings) == 0  # waited for the writer: nothing stale left
    assert published.is_set() and [a.name for a in list_adapters(tiny_settings)] == ["slow"]
    thread.join()
