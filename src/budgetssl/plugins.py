"""The whole run's config check: each config group's plug-in, looked up in its registry, types and checks
its own section, and the pairs of plug-ins that must fit together are checked here.

Layering: config/ (schema, typed sections, the generic sections' checks) names no stage; the plug-ins
(data/, backbones/, methods/, transfer/) import config/; this module sits above both and below the stages
and commands. Each check lives with its subject: a method's in `Method.check`, a transfer dataset's in
`SegmentationDataset.check` (with the heads' names in transfer/heads.py), a backbone family's in its
`check`, a dataset's fields in `DatasetFields.provided`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from budgetssl.backbones.registry import FAMILIES
from budgetssl.config.check import RunConfig, build_run, resolve
from budgetssl.data.registry import DATASETS
from budgetssl.errors import ConfigError
from budgetssl.methods.registry import METHODS
from budgetssl.transfer.registry import TRANSFERS


def check_config(cfg: DictConfig) -> RunConfig:
    """Validate the whole composed config, including the cross-group combinations."""
    cfg = resolve(cfg)
    dataset_cls = DATASETS.get(cfg.dataset.name)
    method_cls = METHODS.get(cfg.method.name)
    transfer_cls = TRANSFERS.get(cfg.transfer.name)
    run = build_run(
        cfg,
        dataset=dataset_cls.config_class,
        method=method_cls.config_class,
        transfer=transfer_cls.config_class,
    )
    transfer_cls.check(run.transfer)
    family = FAMILIES.get(run.backbone.family)
    family.check(run.backbone, run.dataset.image_size)
    family.check(run.backbone, run.transfer.image_size)
    provided = dataset_cls.provided(run.dataset)
    missing = sorted(set(method_cls.needs) - set(provided))
    if missing:
        hint = dataset_cls.missing_hint(run.dataset, set(missing))
        raise ConfigError(
            f"method '{run.method.name}' needs {', '.join(missing)} from its data, but dataset "
            f"'{run.dataset.name}' provides only {', '.join(sorted(provided))}; "
            + (f"{hint}, or pick another dataset= or method=" if hint else "pick another dataset= or method=")
        )
    method_cls.check(run)
    return run
