"""Released weights by name (`limubert-fetch NAME`, and wherever a model path is taken):
LIMU-BERT-X, the four LIMU-BERT encoders of the original release and their GRU classifiers.

Each entry (`Release`) pins its file to a commit of its repository, with the file's SHA-256
and size, the model it holds, its licence and what to cite. `fetch(name)` downloads the file
once into the cache folder (`cache_dir`: `$LIMUBERT_CACHE_DIR`, else
`~/.cache/limubert_jax/weights`), streamed into a staging file there and renamed into place
only when its digest is the pinned one (a wrong file is refused and nothing is left), then
converts it once into a checkpoint folder beside it (the same as `limubert-convert
from_torch`, with a model card) and returns that folder. A released GRU classifier becomes a
whole classifier (`models.pipeline`: its encoder, the 20-step sub-windows, the head), which
`limubert-predict --model=gru:hhar` runs on raw windows. Converting needs the `[torch]` extra
(the files are PyTorch pickles, read with `weights_only=True`).

Offline, or where downloads are blocked, the error names the URL and the path to put the file
at: `fetch` then verifies and converts that file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from etils import epath

from limubert_jax.export.torch_import import read_torch
from limubert_jax.io import checkpoint, storage
from limubert_jax.io.model_card import model_card
from limubert_jax.io.state_dict import GRU_CLASSIFIER, LIMU_BERT
from limubert_jax.models.encoder import LimuBertConfig
from limubert_jax.models.pipeline import ClassifierPipelineConfig
from limubert_jax.models.recurrent import GRUClassifierConfig, gru_v2
from limubert_jax.runtime.errors import LimuBertError, first_line

CACHE_ENV = "LIMUBERT_CACHE_DIR"
DEFAULT_CACHE = "~/.cache/limubert_jax/weights"
ENCODER = "encoder"  # a LIMU-BERT pretraining model (encoder and reconstruction head)
GRU = "gru_classifier"  # a GRU classifier over its encoder's embeddings
_CHUNK = 1 << 20

LIMU_BERT_CITATION = ("Huatao Xu, Pengfei Zhou, Rui Tan, Mo Li, Guobin Shen. LIMU-BERT: Unleashing the Potential of "
                      "Unlabeled Data for IMU Sensing Applications. ACM SenSys 2021. doi:10.1145/3485730.3485937")
LIMU_BERT_X_CITATION = ("Huatao Xu, Yan Zhang, Wei Gao, Guobin Shen, Mo Li. Experience Paper: Adopting Activity "
                        "Recognition in On-demand Food Delivery Business. ACM MobiCom 2025. "
                        "arXiv:2509.24303")


@dataclasses.dataclass(frozen=True)
class Release:
    """One released file and the model it holds."""

    name: str  # what users type: limu_bert_x, limu_bert:hhar, gru:hhar
    kind: str  # ENCODER or GRU
    repository: str  # owner/name on GitHub
    commit: str  # the commit the URL is pinned to
    path: str  # the file in the repository
    sha256: str
    size: int  # bytes
    config: LimuBertConfig | GRUClassifierConfig  # the model the file holds
    about: str  # a sentence for the model card
    data: str  # what it was trained on
    licence: str
    citation: str
    url: str = ""  # default: the raw file at `commit` (tests point it at a file:// URL)
    encoder: str | None = None  # GRU: the release whose embeddings it classifies
    class_names: tuple[str, ...] = ()  # GRU: its classes, in the order of its outputs
    dataset: str = ""  # GRU: name/version of its training windows (20 Hz, 120 steps)

    def __post_init__(self):
        if not self.url:
            object.__setattr__(self, "url", f"https://raw.githubusercontent.com/{self.repository}/{self.commit}/"
                                            f"{self.path}")

    @property
    def slug(self) -> str:
        """Its name as a file name: limu_bert:hhar -> limu_bert_hhar."""
        return self.name.replace(":", "_")


_X_REPO, _X_COMMIT = "WANDS-HKUST/LIMU-BERT_Experience", "bdfc3d0f734befaeb9375f5f7b8a7342f0ddfdcb"
_PUBLIC_REPO, _PUBLIC_COMMIT = "dapowan/LIMU-BERT-Public", "decffee7ecb4e2e5d7244b1a759cb80b752dc6c2"
_MIT_X = "MIT (Copyright (c) 2025 WANDS HKUST)"
_MIT_PUBLIC = "MIT (Copyright (c) 2023 dapowan)"
# The original release's encoders (base_v1: 6 features, 120-step windows at 20 Hz) and the
# activities its GRU classifiers output, in the order of the builders' label indices.
_PUBLIC = {
    "hhar": ("fb82b569c1e38bfab3b3334c132f1a839c53be07302f3f3c48977cf377a4cc48", 39_439,
             "22dab2ba528cd88954395c7f043a006c74fbc38e7d329a64d21e2eb54114b463", "HHAR",
             ("bike", "sit", "stairsdown", "stairsup", "stand", "walk")),
    "motion": ("43b7559ea9c00919d0cc5c520ec9eb280a5cafa2c721a7d131ef384542c6a70a", 39_439,
               "d5359962a969a09986d6942d501e32707c03d2d3457ce200cd7268b8d1a5a0bc", "MotionSense",
               ("downstairs", "upstairs", "sitting", "standing", "walking", "jogging")),
    "shoaib": ("2223e9af3fefa766a7b0f5d822b63e7ca2cb7d67e8a1ac7d5ecd9ee4feff1167", 39_503,
               "4472105a6500e127021a29634972f5c938e0d69c2aa2130548d05c7b121898dd", "Shoaib",
               ("walking", "sitting", "standing", "jogging", "biking", "upstairs", "downstairs")),
    "uci": ("fe92ed1cf439338ba532dbeee309c46f00f3312468602051ddc81bbf2383e5ea", 39_439,
            "a966f8d5e737f1d203ca7c470e76da6a22b95d01f1d861c6217a1edd44185798", "UCI HAPT",
            ("walking", "walking_upstairs", "walking_downstairs", "sitting", "standing", "laying")),
}


def _releases() -> dict[str, Release]:
    out = {"limu_bert_x": Release(
        "limu_bert_x", ENCODER, _X_REPO, _X_COMMIT, "weights/limu_bert_x.pt",
        "65697e7017020f36429a221382253f1fc370fdfd493cfb71667f95846c18516c", 226_783,
        LimuBertConfig(feature_num=6, hidden=72, hidden_ff=144, n_layers=4, n_heads=4, seq_len=20),
        "LIMU-BERT-X, an IMU foundation model: the LIMU-BERT encoder (base_v4) on 1-second windows (20 steps at "
        "20 Hz, acc + gyro), pretrained on about 1.43 million hours of phone IMU data",
        "phone IMU data of about 60K couriers and 1.1K phone models (20 Hz, 6 features, 20-step windows)",
        _MIT_X, LIMU_BERT_X_CITATION)}
    for ds, (gru_sha, gru_size, bert_sha, title, classes) in _PUBLIC.items():
        encoder = f"limu_bert:{ds}"
        out[encoder] = Release(
            encoder, ENCODER, _PUBLIC_REPO, _PUBLIC_COMMIT, f"saved/pretrain_base_{ds}_20_120/{ds}.pt",
            bert_sha, 260_183, LimuBertConfig(feature_num=6, seq_len=120),
            f"The LIMU-BERT encoder (base_v1) pretrained on {title} by the original release",
            f"{title}, windows of 120 steps at 20 Hz, 6 features (acc + gyro)", _MIT_PUBLIC, LIMU_BERT_CITATION)
        out[f"gru:{ds}"] = Release(
            f"gru:{ds}", GRU, _PUBLIC_REPO, _PUBLIC_COMMIT, f"saved/classifier_base_gru_{ds}_20_120/{ds}.pt",
            gru_sha, gru_size, gru_v2(len(classes), 72),
            f"The original release's LIMU-GRU activity classifier on {title}, behind its encoder {encoder}",
            f"{title} activities, labelled 20-step sub-windows of 120-step windows at 20 Hz", _MIT_PUBLIC,
            LIMU_BERT_CITATION, encoder=encoder, class_names=classes, dataset=f"{ds}/20_120")
    return out


RELEASED: dict[str, Release] = _releases()


def is_release(value) -> bool:
    """Whether a model argument names a release (a name wins over a folder of that name:
    write `./limu_bert_x` for the folder)."""
    return isinstance(value, str) and value in RELEASED


def release(name: str) -> Release:
    """The entry `name`; an unknown name is a `LimuBertError` listing the names."""
    if name not in RELEASED:
        raise LimuBertError(f"no released weights named {name!r}; names: {', '.join(RELEASED)}")
    return RELEASED[name]


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: `override`, else `$LIMUBERT_CACHE_DIR`, else `~/.cache/limubert_jax/weights`."""
    chosen = override or os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    if not storage.is_local(chosen):
        raise LimuBertError(f"{chosen}: the weights cache is a local folder")
    return Path(os.path.expanduser(os.fspath(chosen))).absolute()


def resolve(value, *, cache: str | os.PathLike | None = None):
    """A model argument as a path: a release's name fetched (`fetch`), anything else as given."""
    return fetch(value, cache=cache) if is_release(value) else value


def fetch(name: str, *, cache: str | os.PathLike | None = None) -> epath.Path:
    """The checkpoint folder of release `name`, downloaded, verified and converted on first use."""
    entry = release(name)
    folder = cache_dir(cache)
    target = folder / entry.slug
    if (target / checkpoint.CONFIG_FILE).is_file():
        return epath.Path(target)
    if entry.kind == ENCODER:
        _, model, params = _read(entry, folder)
    else:
        _, encoder_config, encoder_params = _read(release(entry.encoder), folder)
        _, head_config, head_params = _read(entry, folder)
        model = ClassifierPipelineConfig(
            method="limu_gru_v2", head="gru_v2", class_names=entry.class_names, label="activity",
            seq_len=encoder_config.seq_len, merge=head_config.seq_len, feature_num=encoder_config.feature_num,
            encoder=encoder_config, sampling_rate_hz=20.0, dataset=entry.dataset)
        params = {"head": head_params, "encoder": {"transformer": encoder_params["transformer"]}}
    card = model_card(checkpoint.kind_of(model), model, title=entry.name, about=f"{entry.about}.", path=entry.name,
                      data=entry.data, source=f"{entry.url} (sha256 {entry.sha256}; {entry.repository} at commit "
                      f"{entry.commit})" + (f", behind {release(entry.encoder).url}" if entry.encoder else ""),
                      licence=entry.licence, citation=entry.citation, command=f"limubert-fetch {entry.name}")
    try:
        checkpoint.save_model(target, params, model, card=card)
    except LimuBertError:
        if not (target / checkpoint.CONFIG_FILE).is_file():  # else another process converted it meanwhile
            raise
    return epath.Path(target)


def _read(entry: Release, folder: Path):
    """(kind, config, params) of a release's file, downloaded first if absent; its model
    must be the one the registry says."""
    path = folder / f"{entry.slug}.pt"
    if path.is_file():
        _check_digest(entry, path)
    else:
        download(entry, path)
    n = entry.config if isinstance(entry.config, LimuBertConfig) else LimuBertConfig()
    kind, config, params = read_torch(path, n_layers=n.n_layers, n_heads=n.n_heads, emb_norm=n.emb_norm)
    expected = LIMU_BERT if entry.kind == ENCODER else GRU_CLASSIFIER
    if kind != expected or config != entry.config:
        raise LimuBertError(f"{path}: holds a {kind} model {config}, not the {entry.config} of {entry.name}")
    return kind, config, params


def _check_digest(entry: Release, path: Path) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != entry.sha256:
        raise LimuBertError(f"{path}: not the released file of {entry.name} (sha256 {digest.hexdigest()[:12]}..., "
                            f"expected {entry.sha256[:12]}...); remove it, or put {entry.url} there")


def download(entry: Release, path: Path) -> Path:
    """Downloads `entry`'s file to `path`, streamed into a staging file beside it and renamed
    into place only when its size and SHA-256 are the pinned ones: a wrong or cut-short
    download is a `LimuBertError` and leaves nothing (nor the folders it made)."""
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        with storage.staged(path) as (tmp,):
            try:
                response = urllib.request.urlopen(entry.url, timeout=60)
            except (urllib.error.URLError, OSError, ValueError) as e:
                why = str(getattr(e, "reason", None) or first_line(e)).strip().splitlines()[0]
                raise LimuBertError(f"cannot download {entry.name} ({why}): fetch {entry.url} and put it "
                                    f"at {path}") from None
            digest, size = hashlib.sha256(), 0
            with response, open(tmp, "wb") as out:
                try:
                    while chunk := response.read(_CHUNK):
                        size += len(chunk)
                        if size > entry.size:
                            break
                        digest.update(chunk)
                        out.write(chunk)
                except OSError as e:
                    raise LimuBertError(f"download of {entry.name} broke off ({first_line(e)}): fetch {entry.url} "
                                        f"and put it at {path}") from None
            if size != entry.size or digest.hexdigest() != entry.sha256:
                got = f"more than {entry.size:,}" if size > entry.size else f"{size:,}"
                raise LimuBertError(f"{entry.url}: refused: {got} bytes with sha256 {digest.hexdigest()[:12]}..., "
                                    f"not the released {entry.size:,} bytes with sha256 {entry.sha256[:12]}...")
    except BaseException:
        for folder in made:  # innermost first; only the ones this call made, if left empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return path
