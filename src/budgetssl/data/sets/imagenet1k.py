"""ImageNet-1K (ILSVRC-2012) in its standard layout: `train/` and `val/` with one folder per class.

Layout: `dataset.root/train/n01440764/n01440764_10026.JPEG`, ..., `dataset.root/val/n01440764/
ILSVRC2012_val_00000293.JPEG` (the validation images sorted into class folders, as the usual valprep.sh
or the Kaggle copy's LOC_val_solution.csv leave them). Labels are the 1,000 folder names (WordNet ids)
in sorted order, 0..999, as torchvision and timm number them. Class names are the first name of each id
in `dataset.root/LOC_synset_mapping.txt` where that file is (the Kaggle copy has it), else the ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from budgetssl.data.class_folders import ClassFolderConfig, ClassFolders, read_class_list
from budgetssl.data.registry import DATASETS

NAMES_FILE = "LOC_synset_mapping.txt"


@dataclass
class ImageNet1KConfig(ClassFolderConfig):
    pass


@DATASETS.register("imagenet1k")
class ImageNet1K(ClassFolders):
    config_class = ImageNet1KConfig
    title = "ImageNet-1K"

    @classmethod
    def classes_from_config(cls, cfg: ImageNet1KConfig) -> tuple[int, str]:  # type: ignore[override]
        # ILSVRC-2012's classes (Russakovsky et al. 2015, IJCV); a copy with other folders has other labels.
        return 1000, "ILSVRC-2012's 1000 classes (its folders not read)"

    def readable_names(self, root: Path, ids: list[str]) -> list[str]:
        path = root / NAMES_FILE
        if not path.is_file():
            return ids
        names = dict(read_class_list(path))
        return [names.get(i, i) for i in ids]
