"""The reference files the repository carries (tests/reference/): where the tests find them,
their digests (SHA256SUMS, and the upstream files' for the released weights), and that the
README, NOTICE and CITATION.cff account for them. Cheap: hashes ~9 MB, runs no model."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest

from conftest import DEFAULT_REFERENCE, REFERENCE_ENV, RELEASED_DATASETS, reference_dir

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "tests" / "reference"
DOCS = {"README.md", "SHA256SUMS"}

# sha256 of the upstream files, byte for byte: dapowan/LIMU-BERT-Public at commit
# decffee7ecb4e2e5d7244b1a759cb80b752dc6c2 (saved/pretrain_base_<ds>_20_120/<ds>.pt,
# saved/classifier_base_gru_<ds>_20_120/<ds>.pt, dataset/uci/label_20_120.npy) and
# WANDS-HKUST/LIMU-BERT_Experience at bdfc3d0f734befaeb9375f5f7b8a7342f0ddfdcb (weights/limu_bert_x.pt).
UPSTREAM_SHA256 = {
    "weights/limu_bert_hhar_20_120.pt": "22dab2ba528cd88954395c7f043a006c74fbc38e7d329a64d21e2eb54114b463",
    "weights/limu_bert_motion_20_120.pt": "d5359962a969a09986d6942d501e32707c03d2d3457ce200cd7268b8d1a5a0bc",
    "weights/limu_bert_shoaib_20_120.pt": "4472105a6500e127021a29634972f5c938e0d69c2aa2130548d05c7b121898dd",
    "weights/limu_bert_uci_20_120.pt": "a966f8d5e737f1d203ca7c470e76da6a22b95d01f1d861c6217a1edd44185798",
    "weights/gru_classifier_hhar_20_120.pt": "fb82b569c1e38bfab3b3334c132f1a839c53be07302f3f3c48977cf377a4cc48",
    "weights/gru_classifier_motion_20_120.pt": "43b7559ea9c00919d0cc5c520ec9eb280a5cafa2c721a7d131ef384542c6a70a",
    "weights/gru_classifier_shoaib_20_120.pt": "2223e9af3fefa766a7b0f5d822b63e7ca2cb7d67e8a1ac7d5ecd9ee4feff1167",
    "weights/gru_classifier_uci_20_120.pt": "fe92ed1cf439338ba532dbeee309c46f00f3312468602051ddc81bbf2383e5ea",
    "weights/limu_bert_x.pt": "65697e7017020f36429a221382253f1fc370fdfd493cfb71667f95846c18516c",
    "uci_label_20_120.npy": "e3264ce6709c80fa2e9bf6c0cee85531ab185fb186f149bf138a0ef11cf26d27",
}


def _listed() -> dict[str, str]:
    """SHA256SUMS as {relative path: digest} (`sha256sum` output format)."""
    lines = (FOLDER / "SHA256SUMS").read_text().splitlines()
    return {name.lstrip("*"): digest for digest, name in (line.split(maxsplit=1) for line in lines if line.strip())}


def _files() -> set[str]:
    return {p.relative_to(FOLDER).as_posix() for p in FOLDER.rglob("*") if p.is_file()} - DOCS


def test_the_tests_read_the_repositorys_copy_unless_told_otherwise(monkeypatch):
    assert DEFAULT_REFERENCE == FOLDER and FOLDER.is_relative_to(ROOT)
    monkeypatch.delenv(REFERENCE_ENV, raising=False)
    assert reference_dir() == FOLDER
    monkeypatch.setenv(REFERENCE_ENV, "")  # set but empty: still the repository's copy
    assert reference_dir() == FOLDER
    monkeypatch.setenv(REFERENCE_ENV, "/elsewhere/reference")
    assert reference_dir() == Path("/elsewhere/reference").resolve()


def test_every_file_the_golden_tests_read_is_here():
    expected = {"uci_label_20_120.npy", "golden/normalization.npz", "golden/span_mask_stats.npz",
                "golden/splits_uci.npz"}
    expected |= {f"golden/optimizer_{name}.npz" for name in
                 ("bertadam_reference_grouping", "bertadam_no_decay_for_bias_and_norm", "torch_adam")}
    for name in RELEASED_DATASETS:
        expected |= {f"golden/released_{name}.npz", f"weights/limu_bert_{name}_20_120.pt",
                     f"weights/gru_classifier_{name}_20_120.pt"}
    assert expected <= _files()


def test_sha256sums_lists_every_file_and_each_matches():
    listed = _listed()
    assert sorted(listed) == sorted(_files())
    mismatched = [name for name, digest in listed.items()
                  if hashlib.sha256((FOLDER / name).read_bytes()).hexdigest() != digest]
    assert mismatched == []


@pytest.mark.parametrize("name", sorted(UPSTREAM_SHA256))
def test_released_files_are_the_upstream_bytes(name):
    assert _listed()[name] == UPSTREAM_SHA256[name]
    assert hashlib.sha256((FOLDER / name).read_bytes()).hexdigest() == UPSTREAM_SHA256[name]


def test_readme_notice_and_citation_account_for_the_files():
    import yaml

    readme = (FOLDER / "README.md").read_text()
    for name in _files():  # each file is described, by name or by its pattern and part
        stem = Path(name).name
        if stem.startswith("optimizer_"):
            described = "optimizer_<name>.npz" in readme and f"`{stem[len('optimizer_'):-len('.npz')]}`" in readme
        else:
            described = stem in readme or any(
                stem.replace(f"_{ds}_", "_<ds>_").replace(f"_{ds}.", "_<ds>.") in readme for ds in RELEASED_DATASETS)
        assert described, name
    assert readme.count("MIT License") == 2 and "Copyright (c) 2023 dapowan" in readme
    assert "Copyright (c) 2025 WANDS HKUST" in readme

    notice = (ROOT / "NOTICE").read_text()
    assert "tests/reference/weights/limu_bert_x.pt" in notice and "License: MIT" in notice
    assert "Apache License" in (ROOT / "LICENSE").read_text()

    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert citation["cff-version"] == "1.2.0" and citation["license"] == project["license"] == "Apache-2.0"
    assert citation["version"] == project["version"]
    assert "10.1145/3485730.3485937" in {ref.get("doi") for ref in citation["references"]}
