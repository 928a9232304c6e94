"""Write a fake installed distribution (metadata, entry points, modules) into a directory on sys.path."""

from __future__ import annotations

import textwrap
from pathlib import Path


def install_fake_distribution(
    site: Path, dist: str, version: str, backends: dict[str, str], modules: dict[str, str]
) -> None:
    """Write a distribution's metadata and modules into ``site``, as an installer would."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {module}" for name, module in backends.items())
    (info / "entry_points.txt").write_text(f"[artifactstore_core.backends]\n{lines}\n")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
