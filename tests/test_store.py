"""calibrate/store.py: the file `capsim calibrate SOURCES` writes without -o, which `capsim validate SOURCES`
finds again: one per set of sources, whatever their order or the spelling of their paths."""
from pathlib import Path

from calibrate.store import store_dir, stored_profile_path


def test_the_store_is_capsim_profile_dir_else_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSIM_PROFILE_DIR", str(tmp_path / "store"))
    assert store_dir() == tmp_path / "store"
    assert stored_profile_path(["seed"]).parent == tmp_path / "store"
    for unset in ("", None):
        if unset is None:
            monkeypatch.delenv("CAPSIM_PROFILE_DIR")
        else:
            monkeypatch.setenv("CAPSIM_PROFILE_DIR", unset)
        assert store_dir() == Path.home() / ".cache" / "capsim" / "profiles"


def test_one_file_per_set_of_sources_however_spelled(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSIM_PROFILE_DIR", str(tmp_path / "store"))
    a, b = tmp_path / "runs" / "gemma-4-31b", tmp_path / "runs" / "qwen-3.5-4b"
    a.mkdir(parents=True)
    b.mkdir()
    monkeypatch.chdir(tmp_path / "runs")
    one = stored_profile_path([str(a), str(b)])
    assert one == stored_profile_path([str(b), str(a)])  # order
    assert one == stored_profile_path(["gemma-4-31b/", "./qwen-3.5-4b", str(a)])  # relative, a slash, twice
    assert one.name.startswith("gemma-4-31b-qwen-3.5-4b-") and one.suffix == ".json"
    others = {stored_profile_path(s) for s in ([str(a)], [str(b)], ["seed"], ["seed", str(a)])}
    assert len(others) == 4 and one not in others
    three = stored_profile_path(["seed", str(a), str(b)])  # named after the first two in order
    assert three.name.startswith("gemma-4-31b-qwen-3.5-4b-") and "seed" not in three.name
    # a name that is no path ('seed') is kept as it is, so the seed's file is its own
    assert stored_profile_path(["seed"]).name.startswith("seed-")


def test_a_name_of_other_characters_still_gets_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSIM_PROFILE_DIR", str(tmp_path))
    odd = stored_profile_path(["@@@"])
    assert odd.name.startswith("profile-") and len(odd.stem) == len("profile-") + 12
    long = stored_profile_path(["x" * 100, "y" * 100])
    assert len(long.stem) == 60 + 1 + 12  # the names' part is cut at 60 characters
