"""`autosink plots`: `dvc plots show` as a page that draws with no network.

DVC's page loads vega, vega-lite and vega-embed from a CDN, so offline it stays blank. Here the
same three scripts (the versions DVC's renderer asks for) come from the npm registry once, are
checked against the registry's sha512 integrity, cached in ``~/.cache/autosink/vega`` (or
``$AUTOSINK_VEGA_CACHE``), and inlined into an ``--html-template``: the page is one
self-contained file that opens anywhere, a laptop on a train included.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import urllib.request
from pathlib import Path

from autosink.core.proc import run

__all__ = ["SCRIPTS", "vendored_scripts", "write_template", "show_plots"]

#: (package, version, file in the tarball, the registry's sha512 integrity of the tarball)
SCRIPTS = (
    (
        "vega",
        "5.20.2",
        "package/build/vega.min.js",
        "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
    ),
    (
        "vega-lite",
        "5.2.0",
        "package/build/vega-lite.min.js",
        "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
    ),
    (
        "vega-embed",
        "6.18.2",
        "package/build/vega-embed.min.js",
        "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
    ),
)
REGISTRY = "https://registry.npmjs.org"


def cache_dir() -> Path:
    return Path(os.environ.get("AUTOSINK_VEGA_CACHE") or Path.home() / ".cache/autosink/vega")


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def vendored_scripts(cache: Path | None = None, registry: str = REGISTRY, timeout: float = 60.0) -> list[Path]:
    """The three scripts on disk, downloaded and verified on first use."""
    cache = cache or cache_dir()
    out = []
    for name, version, member, integrity in SCRIPTS:
        path = cache / f"{name}-{version}.min.js"
        if not path.is_file():
            url = f"{registry}/{name}/-/{name}-{version}.tgz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    data = r.read()
            except OSError as e:
                raise RuntimeError(
                    f"{url}: cannot download ({e}); the plots page needs it once, then it is cached in {cache}"
                ) from None
            if _integrity(data) != integrity:
                raise RuntimeError(f"{url}: the download does not match the registry's integrity {integrity}")
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                member_file = tar.extractfile(member)
                if member_file is None:
                    raise RuntimeError(f"{url}: no {member} in the package")
                script = member_file.read()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(script)
            os.replace(tmp, path)
        out.append(path)
    return out


def write_template(path: Path, scripts: list[Path]) -> Path:
    """An ``--html-template`` for `dvc plots show` with the scripts inlined (DVC puts the plots
    where ``{plot_divs}`` is, by plain text replacement)."""
    inline = "\n".join(
        "<script>\n" + p.read_text(encoding="utf-8").replace("</script", "<\\/script") + "\n</script>" for p in scripts
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>autosink plots</title>\n'
        + inline
        + "\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n",
        encoding="utf-8",
    )
    return path


def show_plots(out_dir: Path, root: Path | None = None) -> Path:
    """`dvc plots show` into ``out_dir`` with the offline template; returns the page.
    :class:`~autosink.core.proc.CommandError` (a RuntimeError showing dvc's output) when it fails."""
    template = write_template(out_dir / "template.html", vendored_scripts())
    run(["dvc", "plots", "show", "--html-template", str(template.resolve()), "-o", str(out_dir.resolve())], cwd=root)
    return out_dir / "index.html"
