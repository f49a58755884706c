"""Released weights by name (`export.released`, `limubert-fetch`), the Python API
(`load_encoder`) and README's snippet, continued pretraining (`config.train.init_from`) and
model cards. No test touches the network: the registry's URLs point at the repository's
copies of the released files (`file://`, tests/reference/weights)."""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from conftest import random_params
from limubert_jax import config_lib, fetch, predict, tasks
from limubert_jax.export import released
from limubert_jax.io import checkpoint
from limubert_jax.models.encoder import LimuBertConfig, LimuBertModel4Pretrain
from limubert_jax.runtime.errors import LimuBertError

ROOT = Path(__file__).resolve().parents[1]
# Each release's copy in tests/reference/weights (tests/reference/README.md says which upstream file it is).
COPIES = {"limu_bert_x": "limu_bert_x.pt",
          **{f"limu_bert:{d}": f"limu_bert_{d}_20_120.pt" for d in ("hhar", "motion", "shoaib", "uci")},
          **{f"gru:{d}": f"gru_classifier_{d}_20_120.pt" for d in ("hhar", "motion", "shoaib", "uci")}}


def _served(reference: Path) -> dict[str, released.Release]:
    return {name: dataclasses.replace(entry, url=(reference / "weights" / COPIES[name]).as_uri())
            for name, entry in released.RELEASED.items()}


@pytest.fixture(scope="module")
def served(reference):
    """The registry with file:// URLs, for the module."""
    with pytest.MonkeyPatch.context() as mp:
        for name, entry in _served(reference).items():
            mp.setitem(released.RELEASED, name, entry)
        yield released.RELEASED


@pytest.fixture(scope="module")
def cache(served, tmp_path_factory):
    """A cache holding limu_bert_x, limu_bert:hhar and gru:hhar, fetched once."""
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("cache")
    for name in ("limu_bert_x", "gru:hhar"):
        released.fetch(name, cache=folder)
    return folder


def test_the_registry_pins_every_file_to_its_commit_and_digest(reference):
    import hashlib

    assert set(released.RELEASED) == set(COPIES)
    for name, entry in released.RELEASED.items():
        data = (reference / "weights" / COPIES[name]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.size, entry.sha256), name
        assert entry.url == f"https://raw.githubusercontent.com/{entry.repository}/{entry.commit}/{entry.path}"
        assert re.fullmatch(r"[0-9a-f]{40}", entry.commit) and entry.licence.startswith("MIT") and entry.citation
    x = released.RELEASED["limu_bert_x"]
    assert x.config == LimuBertConfig(feature_num=6, hidden=72, hidden_ff=144, n_layers=4, n_heads=4, seq_len=20)


def test_the_released_classifiers_classes_are_the_builders_activities():
    from limubert_jax.datasets.hhar import hhar_dataset_builder as hhar
    from limubert_jax.datasets.motionsense import motionsense_dataset_builder as motion
    from limubert_jax.datasets.shoaib import shoaib_dataset_builder as shoaib
    from limubert_jax.datasets.uci_hapt import uci_hapt_dataset_builder as uci

    for name, module in (("hhar", hhar), ("motion", motion), ("shoaib", shoaib), ("uci", uci)):
        assert released.RELEASED[f"gru:{name}"].class_names == module.ACTIVITIES, name


def test_fetch_converts_once_with_a_model_card(cache, reference, capsys):
    target = cache / "limu_bert_x"
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "model_config.json", "params"]
    assert (cache / "limu_bert_x.pt").read_bytes() == (reference / "weights" / "limu_bert_x.pt").read_bytes()
    card = (target / "README.md").read_text()
    for fragment in ("LIMU-BERT-X", "MIT", "MobiCom 2025", "limubert-fetch limu_bert_x", "load_encoder",
                     released.RELEASED["limu_bert_x"].sha256):
        assert fragment in card, fragment
    stamp = (target / "model_config.json").stat().st_mtime_ns
    assert fetch.main(["limu_bert_x", f"--cache_dir={cache}"]) == 0  # found, not converted again
    assert capsys.readouterr().out.strip() == str(target)
    assert (target / "model_config.json").stat().st_mtime_ns == stamp
    kind, config, _ = checkpoint.load_model(target)
    assert (kind, config) == ("limu_bert", released.RELEASED["limu_bert_x"].config)


def test_load_encoder_by_name_gives_the_original_codes_embeddings(cache, reference, monkeypatch):
    import limubert_jax

    monkeypatch.setenv(released.CACHE_ENV, str(cache))
    golden = np.load(reference / "golden" / "released_hhar.npz")
    encoder = limubert_jax.load_encoder("limu_bert:hhar")
    assert encoder.config.seq_len == 120 and encoder.params["transformer"]
    embeddings = encoder.embed(golden["inputs"][:2], normalized=True, batch_size=2)
    np.testing.assert_allclose(embeddings, golden["embeddings"][:2], rtol=0, atol=1e-4)
    with pytest.raises(LimuBertError, match="not a LIMU-BERT encoder; load it with load_classifier"):
        limubert_jax.load_encoder("gru:hhar")


def test_a_released_gru_is_a_whole_classifier_for_predict(cache, reference, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(released.CACHE_ENV, str(cache))
    classifier = predict.load_classifier("gru:hhar")
    config = classifier.config
    assert (config.seq_len, config.merge, config.sampling_rate_hz, config.class_names) == (
        120, 20, 20.0, released.RELEASED["gru:hhar"].class_names)
    golden = np.load(reference / "golden" / "released_hhar.npz")
    logits = config.head_module().apply({"params": classifier.params["head"]}, golden["classifier_windows"][:12])
    np.testing.assert_allclose(logits, golden["classifier_logits"][:12], rtol=0, atol=1e-4)
    card = (cache / "gru_hhar" / "README.md").read_text()
    assert "load_classifier" in card and "bike, sit, stairsdown" in card
    windows = np.random.default_rng(0).normal(size=(3, 120, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", windows)
    assert predict.main(["--model=gru:hhar", f"--input={tmp_path / 'x.npy'}", f"--output={tmp_path / 'p.csv'}"]) == 0
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert header == "window,predicted," + ",".join(f"prob_{c}" for c in config.class_names)


def test_a_wrong_file_is_refused_and_leaves_nothing(served, reference, tmp_path, monkeypatch, capsys):
    # The LIMU-BERT-X entry served the HHAR encoder's bytes: another size and digest.
    monkeypatch.setitem(released.RELEASED, "limu_bert_x", dataclasses.replace(
        served["limu_bert_x"], url=(reference / "weights" / "limu_bert_hhar_20_120.pt").as_uri()))
    cache = tmp_path / "deep" / "cache"
    assert fetch.main(["limu_bert_x", f"--cache_dir={cache}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "refused" in err and "sha256" in err, err
    assert list(tmp_path.iterdir()) == []  # no file, no staging file, not even the folders it made
    # The same bytes with the right size but another digest.
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(b"\0" * released.RELEASED["limu_bert_x"].size)
    monkeypatch.setitem(released.RELEASED, "limu_bert_x", dataclasses.replace(served["limu_bert_x"],
                                                                               url=wrong.as_uri()))
    with pytest.raises(LimuBertError, match="refused: 226,783 bytes with sha256"):
        released.fetch("limu_bert_x", cache=cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wrong.pt"]


def test_offline_the_error_names_the_url_and_where_to_put_the_file(served, tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(released.urllib.request, "urlopen", offline)
    monkeypatch.setitem(released.RELEASED, "limu_bert_x", released._releases()["limu_bert_x"])  # the real URL
    monkeypatch.setenv(released.CACHE_ENV, str(tmp_path / "cache"))
    assert fetch.main(["limu_bert_x"]) == 2
    err = capsys.readouterr().err.strip()
    url = "https://raw.githubusercontent.com/WANDS-HKUST/LIMU-BERT_Experience/" \
          "bdfc3d0f734befaeb9375f5f7b8a7342f0ddfdcb/weights/limu_bert_x.pt"
    assert err == (f"error: cannot download limu_bert_x ([Errno -3] Temporary failure in name "
                   f"resolution): fetch {url} and put it at {tmp_path / 'cache' / 'limu_bert_x.pt'}")
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_name_suggests_the_closest(capsys):
    assert fetch.main(["limu_bert:har"]) == 2
    assert "did you mean limu_bert:hhar?" in capsys.readouterr().err


def _readme_block(section: str) -> str:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def test_the_readme_snippet_runs(cache, monkeypatch, capsys):
    monkeypatch.setenv(released.CACHE_ENV, str(cache))
    exec(compile(_readme_block("The model in Python"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "(4, 120, 72)" in out, out


# --- continued pretraining ---------------------------------------------------------------


def _tiny_config(data_dir, **train):
    config = config_lib.sibling_config(str(ROOT / "tests" / "configs" / "test.py"), "test").get_config()
    config.dataset.data_dir = str(data_dir)
    config.dataset.train_rate = 0.03  # 72 windows: two steps of 32
    config.train.num_epochs = 1
    for field, value in train.items():
        config.train[field] = value
    return config


def test_init_from_starts_pretraining_from_the_given_weights(synthetic_data_dir, tmp_path, monkeypatch):
    import jax
    import jax.numpy as jnp

    from limubert_jax.pretraining import steps, trainer

    model_config = LimuBertConfig(hidden=24, hidden_ff=48, n_layers=2, n_heads=2, seq_len=120)
    start = random_params(LimuBertModel4Pretrain(model_config).init_params, seed=7)
    checkpoint.save_model(tmp_path / "start", start, model_config)
    config = _tiny_config(synthetic_data_dir, init_from=str(tmp_path / "start"))
    config.model.hidden = 72  # the default: follows the weights (24)
    assert trainer.model_config_from(config) == model_config
    seen = []
    real = trainer.jit_train_step

    def watched(*args, **kwargs):
        step_fn = real(*args, **kwargs)

        def step(state, batch, rng):
            if not seen:
                seen.append((jax.device_get(state.params), np.asarray(batch), rng))
            new, metrics = step_fn(state, batch, rng)
            if len(seen) == 1:
                seen.append(float(metrics["loss"]))
            return new, metrics

        return step

    monkeypatch.setattr(trainer, "jit_train_step", watched)
    tasks.run(config, tmp_path / "run")
    (params, batch, rng), first_loss = seen[0], seen[1]
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(start)):
        np.testing.assert_array_equal(a, b)
    masked, positions, targets = steps.mask_batch(jax.random.fold_in(rng, 0), jnp.asarray(batch), model_config,
                                                  trainer.mask_config_from(config))
    direct = float(jnp.sum(steps.squared_errors(start, model_config, masked, positions, targets)) / targets.size)
    np.testing.assert_allclose(first_loss, direct, rtol=1e-5)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "best validation loss" in card and str(tmp_path / "start") in card
    assert json.loads((tmp_path / "run" / "model_config.json").read_text())["config"]["hidden"] == 24


def test_init_from_refuses_weights_of_another_shape(synthetic_data_dir, tmp_path):
    from limubert_jax.pretraining import trainer

    model_config = LimuBertConfig(hidden=24, hidden_ff=48, n_layers=2, n_heads=2, seq_len=120)
    checkpoint.save_model(tmp_path / "start", random_params(LimuBertModel4Pretrain(model_config).init_params),
                          model_config)
    config = _tiny_config(synthetic_data_dir, init_from=str(tmp_path / "start"))
    config.model.hidden = 32
    with pytest.raises(LimuBertError, match=r"config.model.hidden=32 but config.train.init_from=.* has hidden 24"):
        trainer.model_config_from(config)
