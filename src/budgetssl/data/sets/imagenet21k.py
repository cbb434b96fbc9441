"""ImageNet-21K (the full ImageNet; fall11 / winter21, or the ImageNet-21K-P subset) in the layouts its
copies come in:

- `folders`: `dataset.root/train/<WordNet id>/*.JPEG` (and `val/`), as the per-synset tars extract;
  ImageNet-21K-P names its folders imagenet21k_train/ and imagenet21k_val/ (set dataset.train_dir,
  dataset.val_dir).
- `flat`: every image in one folder, `dataset.root/train/<WordNet id>_<n>.JPEG`, labelled through a class
  list file (`dataset.class_list`, relative to the root: one id per line, optionally followed by a name;
  the line number is the label).
- `auto` (default): `folders` if the split's folder has class folders, else `flat`.

In the folders layout a class list, where given, fixes the label order (and names); without one the
labels follow the sorted folder names. The file index of these 13M files is cached (dataset.cache_dir).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from budgetssl.data.class_folders import ClassFolderConfig, ClassFolders
from budgetssl.data.registry import DATASETS


@dataclass
class ImageNet21KConfig(ClassFolderConfig):
    layout: str = MISSING  # auto | folders | flat
    class_list: str | None = MISSING  # file under dataset.root: "<id>[ <name>]" per line; required for flat


@DATASETS.register("imagenet21k")
class ImageNet21K(ClassFolders):
    config_class = ImageNet21KConfig
    title = "ImageNet-21K"

    @classmethod
    def classes_from_config(cls, cfg: ImageNet21KConfig) -> tuple[int, str] | None:  # type: ignore[override]
        if cfg.class_list is not None:
            return None  # as many as the class list's lines
        # The fall 2011 release's synsets (Ridnik et al. 2021, "ImageNet-21K Pretraining for the Masses",
        # Sec. 2: 14,197,122 images in 21,841 classes); winter21 and ImageNet-21K-P have fewer.
        return 21841, "the fall 2011 release's 21,841 synsets (its folders not read)"

    def layout(self, cfg: ImageNet21KConfig) -> str:  # type: ignore[override]
        return cfg.layout

    def class_list(self, cfg: ImageNet21KConfig) -> str | None:  # type: ignore[override]
        return cfg.class_list
