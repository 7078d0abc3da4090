"""The layering rules, read from the code itself (docs/architecture.md draws them).

- The product package (lib/casera) never imports the local cloud (lib/casera_localcloud): an
  operator's production machine installs the product alone.
- Steps never import an official client (hcloud, docker, paramiko, fabric, b2sdk, psycopg,
  cloudflare): providers own every call to a real system.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = REPO / "lib" / "casera"
STEPS = PRODUCT / "steps"
SDKS = {"hcloud", "docker", "paramiko", "fabric", "b2sdk", "psycopg", "cloudflare", "redis"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-local imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def offenders(root: Path, forbidden: set[str]) -> dict[str, list[str]]:
    bad: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        hits = sorted(m for m in imported_modules(path) if m.split(".")[0] in forbidden)
        if hits:
            bad[str(path.relative_to(root))] = hits
    return bad


def test_the_rule_reader_sees_nested_and_from_imports(tmp_path: Path) -> None:
    (tmp_path / "sample.py").write_text(
        "import os\nfrom hcloud.servers import BoundServer\nfrom . import sibling\n"
        "def f():\n    import docker.errors\n")
    assert offenders(tmp_path, SDKS) == {"sample.py": ["docker.errors", "hcloud.servers"]}


def test_product_never_imports_the_local_cloud() -> None:
    assert offenders(PRODUCT, {"casera_localcloud"}) == {}


def test_product_imports_whole_without_the_local_cloud_installed() -> None:
    """Import every module of the product with casera_localcloud made unimportable, as on a
    machine that installed the product alone."""
    script = (
        "import importlib, pkgutil, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'casera_localcloud':\n"
        "            raise ImportError('casera_localcloud is not installed here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import casera\n"
        "names = [m.name for m in pkgutil.walk_packages(casera.__path__, 'casera.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 20  # it really walked the package


def test_casera_local_is_a_plugin_command_of_the_local_cloud() -> None:
    from importlib.metadata import entry_points

    local = [ep for ep in entry_points(group="casera.commands") if ep.name == "local"]
    assert [ep.value for ep in local] == ["casera_localcloud.cli:main"]


def test_steps_never_import_an_official_client() -> None:
    """Providers own every call to a real system; a step only decides (docs/architecture.md)."""
    assert offenders(STEPS, SDKS) == {}


def test_the_runner_and_the_top_level_reach_hetzner_only_through_the_provider() -> None:
    """The env lock and the context talk to Hetzner too; they use the provider as steps do."""
    top = {p for p in PRODUCT.glob("*.py")} | set((PRODUCT / "runner").glob("*.py"))
    bad = {p.name: sorted(m for m in imported_modules(p) if m.split(".")[0] in SDKS)
           for p in top}
    assert {name: mods for name, mods in bad.items() if mods} == {}
