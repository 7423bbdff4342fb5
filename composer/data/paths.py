"""Where composer reads its data folder from (the layout of ../shared/data).

Resolution order, first match wins:
1. an explicit folder (`--data-dir` / a function argument);
2. `$COMPOSER_DATA`;
3. `../shared/data` beside a source checkout of composer (the developers' and CI's layout),
   when that folder exists;
4. the user data folder from platformdirs: `<user_data_dir("composer")>/data`
   (Linux: ~/.local/share/composer/data), where `composer data pull` writes by default.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "COMPOSER_DATA"


def _checkout_data() -> Path:
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def user_data() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("composer", appauthor=False)) / "data"


def resolution(explicit: str | Path | None = None) -> tuple[Path, str]:
    """(folder, which rule chose it)."""
    if explicit is not None:
        return Path(explicit), "explicit folder"
    env = os.environ.get(ENV)
    if env:
        return Path(env), f"${ENV}"
    beside = _checkout_data()
    if (Path(__file__).resolve().parents[2] / "pyproject.toml").exists() and beside.is_dir():
        return beside, "../shared/data beside the source checkout"
    return user_data(), "user data folder (platformdirs)"


def data_root(explicit: str | Path | None = None) -> Path:
    """The data folder composer reads (see the module docstring for the order)."""
    return resolution(explicit)[0]
