"""What a sandbox may see and import, worked out in the parent: the allow-listed packages
found on our sys.path, the paths bound into a namespace sandbox's root, the paths hidden.

Model code imports the standard library and the allow-listed packages (`SandboxConfig.packages`,
top-level import names; by default `DEFAULT_PACKAGES`). A name is used only when it is
installed in a site-packages or dist-packages directory (not our package, not a checkout:
an editable install or a directory on sys.path is skipped with a warning); a name that is not
installed is skipped quietly, so the default list works without numpy. A Python that model
code starts itself (sys.executable, multiprocessing's spawn) gets the standard library only:
the finder for the allow-list lives in the sandbox's interpreter.

    >>> "sympy" in package_dirs(("sympy", "no_such_package_here"))
    True
    >>> [p.rsplit("/", 1)[1] for p in exposed_entries(("sympy",))]
    ['sympy']
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import sys
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_PACKAGES = ["numpy", "sympy", "mpmath"]
OUR_PACKAGE = "score_distill"
# Programs and shared libraries: what the interpreter's extension modules and a subprocess need.
SYSTEM_TREES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd",
             "/etc/group", "/etc/nsswitch.conf", "/etc/alternatives")
_SITE_NAMES = ("site-packages", "dist-packages")
PROJECT_ROOT = str(Path(__file__).resolve().parents[2])  # the checkout (or site dir) holding our package


def check_packages(names: list[str]) -> None:
    """ValueError for an allow-list entry that is not a plain top-level name, or is ours."""
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"SandboxConfig.packages: {name!r} is not a top-level import name")
        if name == OUR_PACKAGE:
            raise ValueError(f"SandboxConfig.packages: {OUR_PACKAGE} may not be imported by model code "
                             f"(it would regenerate the tasks and their answers)")


@lru_cache(maxsize=None)
def package_dirs(names: tuple[str, ...]) -> dict[str, str]:
    """Allow-listed name -> the site-packages directory it is imported from."""
    out = {}
    for name in names:
        entry = _entry(name)
        if entry is None:
            continue
        where = os.path.dirname(entry)
        if os.path.basename(where) not in _SITE_NAMES:
            log.warning("sandbox: package %r is not installed in a site-packages directory (found at %s); "
                        "model code cannot import it", name, entry)
            continue
        out[name] = where
    return out


def _entry(name: str) -> str | None:
    """The package directory or module file of top-level `name` on our sys.path, or None."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return locations[0] if len(locations) == 1 else None  # a namespace package: not supported
    return spec.origin if spec.origin and os.path.isabs(spec.origin) else None  # not built-in


@lru_cache(maxsize=None)
def exposed_entries(names: tuple[str, ...]) -> list[str]:
    """The allow-listed packages' own paths, with the `<name>.libs` directory of shared
    libraries that wheels put beside a package (numpy.libs)."""
    out = []
    for name, where in package_dirs(names).items():
        entry = _entry(name)
        assert entry is not None
        out.append(entry)
        libs = os.path.join(where, f"{name}.libs")
        if os.path.isdir(libs):
            out.append(libs)
    return out


def exposed(names: tuple[str, ...]) -> list[str]:
    """Every path bound read-only into a namespace sandbox (it adds its own sys.path, the
    standard library): the system trees, a few /etc files, the interpreter's library
    directory (libpython, the standard library) and program, the allow-listed packages."""
    return [*SYSTEM_TREES, *ETC_FILES, os.path.join(sys.base_prefix, "lib"), sys.executable,
            *exposed_entries(names)]


@lru_cache(maxsize=None)
def _site_dirs() -> tuple[str, ...]:
    """Every site-packages or dist-packages directory a system tree or our interpreter holds."""
    roots = {"/usr", "/usr/local", sys.base_prefix, sys.prefix}
    found = set()
    for root in roots:
        for lib in ("lib", "lib32", "lib64"):
            for pattern in ("python3*/site-packages", "python3*/dist-packages", "python3/dist-packages"):
                found.update(glob.glob(os.path.join(root, lib, pattern)))
    found.update(p for p in sys.path if os.path.basename(p) in _SITE_NAMES)
    return tuple(sorted(found))


def hidden() -> list[str]:
    """Paths covered by an empty directory where they lie inside a bound tree: the site
    directories (which hold every installed package), our checkout, the model cache, home
    directories and our working directory (run directories usually lie there)."""
    from score_distill.models.builtin import cache_root  # lazily: the parent may not need models

    caches = [str(cache_root()), os.environ.get("XDG_CACHE_HOME", ""), os.environ.get("HF_HOME", "")]
    places = [*_site_dirs(), PROJECT_ROOT, os.getcwd(), os.path.expanduser("~"), "/root", "/home", *caches]
    return [p for p in dict.fromkeys(places) if p and p != "/"]
