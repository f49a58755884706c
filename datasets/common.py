"""Pieces shared by the IMU dataset builders (installed as `limubert_jax.datasets.common`).

Every builder here produces one example per window with `imu` float32 (S, F) in physical
units (accelerometer m/s^2, gyroscope rad/s, magnetometer uT) and its labels, in the order
of the source, so that the reference split indices (`limubert_jax.data.splits`) apply. The
builder configs are the reference versions: `20_120` (20 Hz, 120-step windows) and
`10_100` (10 Hz, 100-step windows).

Builders of recorded datasets subclass `ImuBuilder` (below): it declares the features from
class attributes, finds the raw files (manual directory, archive or download: `layout`) and
turns `windows()` into examples. Builders made from a folder the user names subclass
`UserFolderBuilder`: one build per folder, and a check that a build is still of the folder's
files. The reference preprocessing they share is in `resampling`.

Every builder class pins `code_path` / `pkg_dir_path` to its own folder (`ImuBuilder` does it
for its subclasses): TFDS infers them through `importlib_resources`, which it no longer
installs on Python >= 3.9 (tensorflow/datasets#11212), and from the package path, which is
wrong for this folder once an editable install maps it to `limubert_jax.datasets`.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import inspect
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from limubert_jax.datasets import layout


def ordered_key(index: int, total: int) -> int:
    """The example key of window `index` of `total` for a `disable_shuffling` build.

    TFDS writes such a build in the order of its keys, spilling examples past 1 GB to 1,000
    bucket files by key range (the top of a 128-bit key space) and sorting each bucket in
    memory when it writes the array_record files. Keys 0, 1, 2, ... all fall in the first
    bucket, so a corpus larger than that limit would be sorted in memory whole; keys spread
    evenly over the space keep the order and fill the buckets evenly (about 1/1000 of the
    corpus in memory at a time).
    """
    return index * ((1 << 128) // max(int(total), 1))


# The reference's feature layout (docs/reference.md §1): acc 0-2, gyro 3-5, mag 6-8.
FEATURE_NAMES = (
    "acc_x", "acc_y", "acc_z",
    "gyro_x", "gyro_y", "gyro_z",
    "mag_x", "mag_y", "mag_z",
)  # fmt: skip
FEATURE_UNITS = ("m/s^2",) * 3 + ("rad/s",) * 3 + ("uT",) * 3

# A label value meaning "no label" (an empty cell of a recording, a window whose label changes
# inside it); classes are >= 0, so it is never one. Builders write it, the downstream protocol
# drops the sub-windows that hold it.
MISSING_LABEL = -1

# version name -> (sampling rate in Hz, steps per window)
VERSIONS = {"20_120": (20, 120), "10_100": (10, 100)}


@dataclasses.dataclass(eq=False)
class ImuConfig(tfds.core.BuilderConfig):
    """A reference version: windows of `seq_len` steps sampled at `sampling_rate` Hz."""

    sampling_rate: int = 20
    seq_len: int = 120


@dataclasses.dataclass(eq=False)
class SourceConfig(ImuConfig):
    """A version built from one user folder (imu_npy, recordings): its name is
    `<version>-<key>`, the key a hash of the folder and `options`, so that two folders (or
    one folder read with other options) are two builds side by side in one data_dir."""

    source_dir: str = ""
    options: tuple[tuple[str, Any], ...] = ()  # (name, value) pairs that change what is built

    @property
    def window_version(self) -> str:
        """`<rate>_<steps>` without the source key (the config name has it)."""
        return f"{self.sampling_rate}_{self.seq_len}"


def source_config(builder_name: str, version: str, source_dir: os.PathLike | str, options: dict[str, Any] | None = None,
                  ) -> SourceConfig:
    """The `SourceConfig` of `version` built from `source_dir` (resolved to an absolute path,
    or kept as a URI such as gs://...) with `options`."""
    rate, steps = parse_version(version)
    source = os.fspath(source_dir)
    if "://" not in source:
        source = os.path.abspath(os.path.expanduser(source))
    options = tuple(sorted((options or {}).items()))
    key = hashlib.sha256(json.dumps([source, options]).encode()).hexdigest()[:10]
    shown = ", ".join(f"{k}={v}" for k, v in options)
    return SourceConfig(
        name=f"{version}-{key}",
        description=f"{builder_name} from {source} at {rate} Hz, {steps}-step windows ({steps / rate:g} s)"
        + (f"; {shown}" if shown else "") + ".",
        sampling_rate=rate, seq_len=steps, source_dir=source, options=options,
    )


def parse_version(version: str) -> tuple[int, int]:
    """'50_200' -> (50 Hz, 200 steps); a ValueError says what a version must look like."""
    match = re.fullmatch(r"(\d+)_(\d+)", str(version))
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 2:
        raise ValueError(f"version {version!r}: expected <rate Hz>_<window steps> with a rate of at least 1 Hz "
                         f"and at least 2 steps, e.g. 20_120 or 50_200")
    return int(match.group(1)), int(match.group(2))


def version_configs(description: str) -> list[ImuConfig]:
    """One `ImuConfig` per reference version (`20_120`, `10_100`)."""
    return [
        ImuConfig(
            name=name,
            description=f"{description} {rate} Hz, {steps}-step windows ({steps / rate:g} s).",
            sampling_rate=rate,
            seq_len=steps,
        )
        for name, (rate, steps) in VERSIONS.items()
    ]


def imu_feature(seq_len: int, num_features: int | None, doc: str) -> tfds.features.Tensor:
    """The `imu` feature every builder declares: (seq_len, num_features) float32 windows in
    physical units (None: the build's own channel count), stored as raw bytes (fast to decode,
    no TensorFlow)."""
    return tfds.features.Tensor(shape=(seq_len, num_features), dtype=np.float32,
                                encoding=tfds.features.Encoding.BYTES, doc=doc)


def imu_metadata(config: ImuConfig, num_features: int = 9, **extra) -> tfds.core.MetadataDict:
    """The metadata every IMU builder records (read back by the input pipeline).

    Stored in `metadata.json` beside the prepared data and restored with the dataset info:
    `sampling_rate_hz`, `seq_len`, `feature_names`, `feature_units` (of the first
    `num_features` reference channels), plus `extra`.
    """
    return tfds.core.MetadataDict(
        sampling_rate_hz=config.sampling_rate,
        seq_len=config.seq_len,
        feature_names=list(FEATURE_NAMES[:num_features]),
        feature_units=list(FEATURE_UNITS[:num_features]),
        **extra,
    )


# ---------------------------------------------------------------------------------------
# Base classes.


def pin_to_own_folder(cls) -> None:
    """Points a builder class's `code_path` / `pkg_dir_path` at the file defining it (see
    the module doc): TFDS then reads that folder's README.md, CITATIONS.bib, checksums.tsv."""
    cls.code_path = epath.Path(inspect.getfile(cls))
    cls.pkg_dir_path = cls.code_path.parent


class RemovesFailedBuilds:
    """Builder mixin: after a failed `download_and_prepare`, the folders of this build that
    the call created are gone. TFDS removes its incomplete folder but leaves
    `<name>/<config>/` behind, empty; only empty folders this call made are removed."""

    def download_and_prepare(self, *args, **kwargs):
        config_dir = epath.Path(self.data_dir).parent
        created = [d for d in (config_dir, config_dir.parent) if not d.exists()]
        try:
            return super().download_and_prepare(*args, **kwargs)
        except BaseException:
            for directory in created:  # innermost first
                if directory.is_dir() and not any(directory.iterdir()):
                    directory.rmdir()
            raise


class ImuBuilder(RemovesFailedBuilds, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the recorded-dataset builders: one `train` split of windows in source order.

    A subclass sets the class attributes below, `BUILDER_CONFIGS` (`version_configs`),
    `MANUAL_DOWNLOAD_INSTRUCTIONS`, and implements `windows(raw_dir)`; README.md and
    CITATIONS.bib beside it give the description and citation.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    NUM_FEATURES: int = 6  # channels of `imu`, the first of FEATURE_NAMES
    TASKS: dict[str, tuple[str, ...]] = {}  # task -> class names; a label is the index of its name
    SUPERVISED_TASK: str = "activity"  # the (imu, label) pair of `as_supervised`
    HOMEPAGE: str | None = None
    REQUIRED_FILES: tuple[str, ...] = ()  # paths the raw layout must hold, relative to its root
    ARCHIVES: tuple[str, ...] = ()  # archive names accepted in the manual directory
    URLS: tuple[str, ...] = ()  # official download URLs (checksums.tsv); empty: manual only
    EXTRA_METADATA: dict[str, Any] = {}
    # The highest rate a version may ask for (the raw data's); any `<rate>_<steps>` up to it
    # is built by the same procedure. None: only the BUILDER_CONFIGS versions.
    MAX_RATE_HZ: float | None = None

    @classmethod
    def config_for(cls, version: str) -> ImuConfig:
        """The builder config of `version`: a listed one, or any `<rate>_<steps>` the raw
        data can make (ValueError naming the limit otherwise)."""
        listed = {c.name: c for c in cls.BUILDER_CONFIGS}
        if version in listed:
            return listed[version]
        if cls.MAX_RATE_HZ is None:
            raise ValueError(f"dataset {cls.name!r} has no version {version!r}; versions: {', '.join(listed)}")
        rate, steps = parse_version(version)
        if rate > cls.MAX_RATE_HZ:
            raise ValueError(f"dataset {cls.name!r} cannot make version {version}: its raw data is sampled at "
                             f"{cls.MAX_RATE_HZ:g} Hz, and {rate} Hz would need up-sampling")
        return ImuConfig(name=version, description=f"{cls.name} at {rate} Hz, {steps}-step windows "
                         f"({steps / rate:g} s).", sampling_rate=rate, seq_len=steps)

    def __init_subclass__(cls, **kwargs):
        pin_to_own_folder(cls)  # before TFDS registers the class
        super().__init_subclass__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        units = ", ".join(f"{n} ({u})" for n, u in zip(FEATURE_NAMES, FEATURE_UNITS[: self.NUM_FEATURES]))
        features = {
            "imu": imu_feature(config.seq_len, self.NUM_FEATURES, units),
        }
        features.update({task: tfds.features.ClassLabel(names=list(names)) for task, names in self.TASKS.items()})
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("imu", self.SUPERVISED_TASK),
            homepage=self.HOMEPAGE,
            disable_shuffling=True,  # keep the source order: the reference split indices apply
            metadata=imu_metadata(
                config, self.NUM_FEATURES, tasks={t: list(n) for t, n in self.TASKS.items()}, **self.EXTRA_METADATA
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {"train": self._generate_examples(self.raw_dir(dl_manager))}

    def _generate_examples(self, raw_dir: epath.Path):
        config = self.builder_config
        key = -1
        for key, (imu, labels) in enumerate(self.windows(raw_dir)):
            if imu.shape != (config.seq_len, self.NUM_FEATURES):
                raise ValueError(f"{self.name}/{config.name}: window {key} has shape {imu.shape}")
            yield key, {"imu": np.asarray(imu, np.float32), **{t: int(labels[t]) for t in self.TASKS}}
        if key < 0:  # TFDS would only say that no examples were yielded
            raise ValueError(f"{self.name}/{config.name}: the raw data in {raw_dir} makes no window of "
                             f"{config.seq_len} steps at {config.sampling_rate} Hz (recordings too short, or "
                             f"sampled too sparsely for this rate)")

    @abc.abstractmethod
    def windows(self, raw_dir: epath.Path) -> Iterator[tuple[np.ndarray, dict[str, int]]]:
        """(imu [S, F] in physical units, {task: label index}) per window, in reference order."""

    def raw_dir(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
        """The root of the raw layout (the directory holding every REQUIRED_FILES path).

        Looked for in the manual directory (extracted, possibly a few folders down, or as
        one of ARCHIVES there, nested archives included); without one, downloaded from
        URLS. A manual directory given explicitly is never replaced by a download. Raises
        FileNotFoundError naming what is missing.
        """
        manual = layout.manual_dir_or_none(dl_manager)
        if manual is not None:
            found = layout.find_layout(manual, self.REQUIRED_FILES)
            if found is not None:
                return found
            archives = [manual / a for a in self.ARCHIVES if (manual / a).is_file()]
            if archives:
                return self._from_archives(dl_manager, archives, f"the archive {archives[0]}")
            partial = layout.best_partial(manual, self.REQUIRED_FILES)
            # TFDS's default manual dir (<download_dir>/manual) is shared by all datasets: only
            # there may an unrelated content fall through to the download.
            default = manual == epath.Path(dl_manager.download_dir) / "manual"
            if partial is not None or not self.URLS or not default:
                root = partial or manual
                raise FileNotFoundError(
                    f"{self.name}: the manual directory {manual} is incomplete: missing "
                    f"{root / layout.missing(root, self.REQUIRED_FILES)[0]} (the raw layout needs "
                    f"{', '.join(self.REQUIRED_FILES)}"
                    + (f"; or put one of the archives {', '.join(self.ARCHIVES)} there" if self.ARCHIVES else "")
                    + f"). {one_line(self.MANUAL_DOWNLOAD_INSTRUCTIONS)}"
                )
        configured = getattr(dl_manager, "_manual_dir", None)
        explicit = configured is not None and epath.Path(configured) != epath.Path(dl_manager.download_dir) / "manual"
        if not self.URLS or explicit:
            raise FileNotFoundError(
                f"{self.name}: the manual directory {configured} does not "
                f"exist or is empty (pass --config.dataset.manual_dir=DIR). "
                f"{one_line(self.MANUAL_DOWNLOAD_INSTRUCTIONS)}"
            )
        downloaded = dl_manager.download(list(self.URLS))
        return self._from_archives(dl_manager, [epath.Path(p) for p in downloaded], "the download")

    def _from_archives(self, dl_manager, archives: list[epath.Path], what: str) -> epath.Path:
        roots = layout.extract_archives(dl_manager, archives)
        for _ in range(3):  # archives inside archives (HHAR ships a zip in its zip)
            for root in roots:
                found = layout.find_layout(root, self.REQUIRED_FILES)
                if found is not None:
                    return found
            inner = [p for root in roots for p in layout.archives_below(root)]
            if not inner:
                break
            roots = roots + layout.extract_archives(dl_manager, inner)
        raise FileNotFoundError(
            f"{self.name}: {what} does not hold the expected layout: missing "
            f"{layout.missing(roots[0], self.REQUIRED_FILES)[0]} under {roots[0]}"
        )



class UserFolderBuilder(RemovesFailedBuilds, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the builders made from files in a folder the user names (imu_npy and the
    reference .npy datasets built on it, eleme and huawei; recordings): a build records what
    it was made from, and `check_current(manual_dir)` refuses to serve it once the folder
    holds other files. The input pipeline calls it on every prepared build it opens with a
    manual directory, so that a changed folder is never trained on from an old build.

    With `KEYED_BY_SOURCE`, each folder (and each value of `SOURCE_OPTIONS`) is a build of its
    own, `config_for(version, source_dir, **options)` (a `SourceConfig`), so that several
    live side by side in one data_dir; without it the builder's listed versions are built.
    """

    # The input pipeline builds `config_for(version, source_dir=manual_dir, **options)`, its
    # options the config.dataset fields named in SOURCE_OPTIONS (with their defaults).
    KEYED_BY_SOURCE: bool = True
    SOURCE_OPTIONS: dict[str, Any] = {}

    @classmethod
    def config_for(cls, version: str, source_dir, **options) -> SourceConfig:
        """The build of the files in `source_dir` at `version` with `options`, keyed by both."""
        unknown = sorted(set(options) - set(cls.SOURCE_OPTIONS))
        if unknown:
            raise ValueError(f"{cls.name} has no option {unknown[0]!r}")
        return source_config(cls.name, version, source_dir, options)

    @abc.abstractmethod
    def check_current(self, manual_dir: os.PathLike | str) -> None:
        """Raises ValueError, naming the build and what to do, when this prepared build was made
        from other files than those in `manual_dir` now (added, removed or rewritten)."""


def one_line(text: str) -> str:
    """`text` with its line breaks and runs of spaces as single spaces (for one-line errors)."""
    return " ".join(text.split())
