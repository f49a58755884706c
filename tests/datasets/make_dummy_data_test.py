"""The committed dummy_data/ folders (datasets/<name>/dummy_data/) are make_dummy_data.py's
output, byte for byte, each under its size limit."""

from __future__ import annotations

import pytest

import make_dummy_data


@pytest.mark.parametrize("name", sorted(make_dummy_data.WRITERS))
def test_dummy_data_is_what_the_script_writes(name, tmp_path):
    make_dummy_data.write(name, tmp_path)
    committed = make_dummy_data.dummy_data_dir(name)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    kept = {p.relative_to(committed): p.read_bytes() for p in committed.rglob("*") if p.is_file()}
    assert fresh.keys() == kept.keys(), name
    assert all(fresh[k] == kept[k] for k in fresh), f"{name}: rerun python tests/datasets/make_dummy_data.py {name}"
    assert make_dummy_data.folder_bytes(committed) < make_dummy_data.MAX_BYTES
