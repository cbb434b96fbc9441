"""Where the top-level `configs/` tree lives, from a clone and from an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


def config_dir() -> Path:
    """The wheel ships configs inside the package; a clone (or editable install) keeps them at the top."""
    candidates = (_PACKAGE / "configs", _PACKAGE.parents[1] / "configs")
    for candidate in candidates:
        if (candidate / "config.yaml").is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"budgetssl configs not found (looked in {looked}); reinstall the package")
