"""A user's own method without forking (README "Your own method"): a package outside budgetssl registers
its method through the `budgetssl.methods` entry point group and brings its configs through
`hydra.searchpath`; the real console script composes, trains and records it.

The package is written into tmp_path with a hand-written `.dist-info` folder beside it: on sys.path
(PYTHONPATH for the commands started), that is an installed distribution as importlib.metadata finds
one, entry points and all, without a pip install into a temporary environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from budgetssl.config.paths import config_dir
from budgetssl.errors import ConfigError
from budgetssl.registry import Registry
from conftest import TINY, TINY_BUDGET, cli, summary

PACKAGE, METHOD = "mysimclr_plugin", "mysimclr"

MODULE = '''"""SimCLR under another name: a method of the user's own package."""

from budgetssl.methods.registry import METHODS
from budgetssl.methods.zoo.simclr import SimCLR


@METHODS.register("mysimclr")
class MySimCLR(SimCLR):
    pass
'''


def distribution(site: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """A distribution installed into `site` as pip would leave it: its modules and a dist-info folder
    with METADATA and entry_points.txt."""
    for path, text in modules.items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text(text)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def copied_config(relative: str) -> str:
    """The built-in SimCLR config at `relative`, renamed: a user's copy of an existing method's configs."""
    text = (config_dir() / relative).read_text()
    text = text.replace("name: simclr", f"name: {METHOD}").replace("/method/simclr", f"/method/{METHOD}")
    assert METHOD in text
    return text


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The user's package, installed into a folder of its own: the method's module, its configs (the
    reference one and the CPU one layered on it, as configs/method/ and configs/method/cpu/ are) and
    the entry point that names the module."""
    root = tmp_path_factory.mktemp("site")
    distribution(
        root,
        PACKAGE,
        f"[budgetssl.methods]\n{METHOD} = {PACKAGE}.method\n",
        {
            f"{PACKAGE}/__init__.py": "",
            f"{PACKAGE}/method.py": MODULE,
            f"{PACKAGE}/configs/__init__.py": "",  # pkg://mysimclr_plugin.configs needs an importable package
            f"{PACKAGE}/configs/method/{METHOD}.yaml": copied_config("method/simclr.yaml"),
            f"{PACKAGE}/configs/method/cpu/{METHOD}.yaml": copied_config("method/cpu/simclr.yaml"),
        },
    )
    return root


@pytest.fixture
def on_path(site, monkeypatch) -> Path:
    """The user's package visible to the commands this test starts (PYTHONPATH), not to this process."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return site


def test_the_registry_lists_an_installed_plugin_and_its_configs_compose_through_the_searchpath(on_path):
    script = (
        "import json, sys\n"
        "from budgetssl.config.compose import compose_config\n"
        "from budgetssl.methods.registry import METHODS\n"
        "from budgetssl.plugins import check_config\n"
        "from budgetssl.errors import ConfigError\n"
        "run = check_config(compose_config(sys.argv[1:]))\n"
        "try:\n"
        "    compose_config(sys.argv[2:])\n"
        "    unfound = None\n"
        "except ConfigError as e:\n"
        "    unfound = str(e)\n"
        "print(json.dumps({'names': METHODS.names(), 'cls': type(run.method).__name__, 'unfound': unfound,\n"
        "                  'name': run.method.name, 'proj_dim': run.method.proj_dim}))\n"
    )
    searchpath = f"hydra.searchpath=[file://{on_path / PACKAGE / 'configs'}]"
    proc = subprocess.run(
        [sys.executable, "-c", script, searchpath, f"method=cpu/{METHOD}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert METHOD in out["names"] and "simclr" in out["names"]
    # The CPU config layered on the plugin's own (proj_dim 64, not the reference's 256), typed onto the
    # config class of the method it subclasses.
    assert (out["cls"], out["name"], out["proj_dim"]) == ("SimCLRConfig", METHOD, 64)
    # Without the searchpath the same override finds no config: the searchpath is what brings it.
    assert out["unfound"] is not None and f"method/cpu/{METHOD}" in out["unfound"]


def test_a_plugin_method_trains_through_the_console_script_and_its_record_names_it(on_path, tmp_path):
    run = tmp_path / "run"
    proc = cli(
        "budgetssl-pretrain",
        f"hydra.searchpath=[pkg://{PACKAGE}.configs]",
        f"method=cpu/{METHOD}",
        *TINY,
        TINY_BUDGET,
        "train.monitor_images=0",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    record = summary(run)
    assert record["status"] == "completed", proc.stderr[-4000:]
    assert record["method"] == METHOD
    assert record["steps"] >= 2 and record["train_flops"] <= record["budget_flops"]
    assert "name: mysimclr" in (run / ".hydra" / "config.yaml").read_text()


# The loading rules, on a registry of their own entry point group (so nothing here reaches METHODS).


def registry_of(site: Path, monkeypatch, group: str, entry_points: str, modules: dict[str, str]) -> Registry:
    distribution(site, f"plugin_{group}", f"[{group}]\n{entry_points}\n", modules)
    monkeypatch.syspath_prepend(str(site))
    return Registry("method", "budgetssl.methods.zoo", entry_points=group)


def test_an_entry_point_may_name_the_class_itself(tmp_path, monkeypatch):
    modules = {"by_class.py": "class Thing:\n    pass\n"}
    registry = registry_of(tmp_path, monkeypatch, "bssl_test_by_class", "thing = by_class:Thing", modules)
    assert registry.names() == ["thing"]
    assert registry.get("thing").__name__ == "Thing"


def test_a_broken_plugin_is_an_error_naming_its_entry_point_distribution_and_fix(tmp_path, monkeypatch):
    modules = {"broken_method.py": "import a_module_nobody_installed\n"}
    registry = registry_of(tmp_path, monkeypatch, "bssl_test_broken", "broken = broken_method", modules)
    for _ in range(2):  # every lookup says so, not only the first
        with pytest.raises(ConfigError) as e:
            registry.get("broken")
        message = str(e.value)
        assert "'broken = broken_method'" in message and "'plugin_bssl_test_broken'" in message
        assert "a_module_nobody_installed" in message and "pip uninstall plugin_bssl_test_broken" in message


def test_a_plugin_that_registers_another_name_is_an_error_naming_both(tmp_path, monkeypatch):
    modules = {"misnamed.py": "from budgetssl.registry import Registry\n"}  # loads, registers nothing
    registry = registry_of(tmp_path, monkeypatch, "bssl_test_misnamed", "wanted = misnamed", modules)
    with pytest.raises(ConfigError, match="registered no method 'wanted'.*plugin_bssl_test_misnamed"):
        registry.names()
