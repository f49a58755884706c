"""Repository-level pytest hooks.

The TFDS-layout builder tests live in `datasets/<name>/<name>_dataset_builder_test.py`.
That folder is the package `limubert_jax.datasets` (installed by package-dir mapping), and
imported as a top-level `datasets` it refuses to load (it would shadow Hugging Face's). So
pytest collects those folders as plain directories and imports their test modules under
their installed names, `limubert_jax.datasets.<name>.<module>`.
"""
import importlib
import pathlib

import pytest

_DATASETS = pathlib.Path(__file__).resolve().parent / "datasets"


class _InstalledModule(pytest.Module):
    def _getobj(self):
        rel = self.path.resolve().relative_to(_DATASETS).with_suffix("")
        return importlib.import_module(".".join(("limubert_jax.datasets", *rel.parts)))


def pytest_pycollect_makemodule(module_path, parent):
    if _DATASETS in pathlib.Path(module_path).resolve().parents:
        return _InstalledModule.from_parent(parent, path=module_path)
    return None


def pytest_collect_directory(path, parent):
    path = pathlib.Path(path).resolve()
    if path == _DATASETS or _DATASETS in path.parents:
        return pytest.Dir.from_parent(parent, path=path)
    return None
