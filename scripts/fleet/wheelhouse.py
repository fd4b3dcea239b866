"""The wheelhouse the hosts install from: the wardrobe wheel and every dependency, resolved for the hosts' Python.

Built once on the controller (the only machine that reaches PyPI); the roles ship it to each host and pip
installs with --no-index. Production uses the same artifact from the same place (dist/wheelhouse/).
"""

import subprocess
import sys
from email.parser import Parser
from pathlib import Path
from zipfile import ZipFile

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from paths import REPO, STAND_IN_WHEELHOUSE, VENV_BIN, WHEELHOUSE

# Debian 12's python3 is 3.11.2. pip download --python-version only changes tag and Requires-Python checks;
# markers such as redis's `async-timeout; python_full_version < "3.11.3"` are still judged by the controller's
# Python, so the closure is checked again below with the hosts' marker environment.
HOST_PYTHON = "3.11.2"
# Debian 12 has glibc 2.36: any manylinux wheel up to that works there, and so does our own linux_x86_64 build.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)] + [
    "manylinux2014_x86_64",
    "linux_x86_64",
]
EXTRAS = "worker"
# Needed at run time by the hosts but not (yet) in install_requires: gunicorn's `packaging`, brands.py's `requests`.
ALSO = ["packaging", "requests"]
# Published as source only: built here (gunicorn_h1c's C parser against this Debian 12's glibc, like the hosts'),
# then found by pip download through --find-links.
SDIST_ONLY = ["psycogreen", "gunicorn_h1c"]
# The hosts get the versions the test suite ran against in .venv where it has them.
CONSTRAINTS = WHEELHOUSE / "constraints.txt"


def pip_download(*requirements: str, deps: bool = True, dest: Path = WHEELHOUSE) -> None:
    target = [f"--platform={p}" for p in PLATFORMS]
    cmd = [str(VENV_BIN / "pip"), "download", "--quiet", "--dest", str(dest), "--only-binary=:all:"]
    cmd += ["--find-links", str(WHEELHOUSE), "--constraint", str(CONSTRAINTS)]
    cmd += [f"--python-version={HOST_PYTHON}", "--implementation=cp", "--abi=cp311", *target]
    cmd += [] if deps else ["--no-deps"]
    subprocess.run([*cmd, *requirements], check=True)


def pip_wheel(*requirements: str) -> None:
    cmd = [str(VENV_BIN / "pip"), "wheel", "--quiet", "--no-deps", "--wheel-dir", str(WHEELHOUSE)]
    subprocess.run([*cmd, *requirements], check=True)


def write_constraints() -> None:
    """Pins from .venv, less the editable wardrobe itself."""
    frozen = subprocess.run(
        [str(VENV_BIN / "pip"), "freeze", "--exclude-editable"], check=True, capture_output=True, text=True
    ).stdout
    CONSTRAINTS.write_text("".join(line + "\n" for line in frozen.splitlines() if "==" in line))


def build_wardrobe_wheel() -> Path:
    """Always rebuilt: it is the code being deployed. Its C extension makes it cp311-cp311-linux_x86_64."""
    for old in WHEELHOUSE.glob("wardrobe-*.whl"):
        old.unlink()
    subprocess.run(
        [str(VENV_BIN / "pip"), "wheel", "--quiet", "--no-deps", "--wheel-dir", str(WHEELHOUSE), str(REPO)],
        check=True,
    )
    return next(WHEELHOUSE.glob("wardrobe-*.whl"))


def requires(wheel: Path) -> list[Requirement]:
    with ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(z.read(meta).decode())
    return [Requirement(r) for r in message.get_all("Requires-Dist") or []]


def missing_for_hosts(root: Path) -> list[str]:
    """Requirements the hosts' Python needs that no wheel in the wheelhouse satisfies."""
    wheels = {canonicalize_name(parse_wheel_filename(w.name)[0]): w for w in WHEELHOUSE.glob("*.whl")}
    env = dict(default_environment(), python_full_version=HOST_PYTHON, python_version="3.11")
    seen, todo, missing = set(), [(root, {EXTRAS})], []
    while todo:
        wheel, extras = todo.pop()
        for req in requires(wheel):
            if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in extras | {""}):
                continue
            name = canonicalize_name(req.name)
            if name not in wheels:
                missing.append(str((req.specifier and f"{req.name}{req.specifier}") or req.name))
            elif (name, frozenset(req.extras)) not in seen:
                seen.add((name, frozenset(req.extras)))
                todo.append((wheels[name], set(req.extras)))
    return sorted(set(missing))


def build() -> None:
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    write_constraints()
    wheel = build_wardrobe_wheel()
    pip_wheel(*SDIST_ONLY, "--constraint", str(CONSTRAINTS))
    pip_download(f"{wheel}[{EXTRAS}]", *ALSO)
    for _ in range(5):
        missing = missing_for_hosts(wheel)
        if not missing:
            break
        print(f"wheelhouse: adding for Python {HOST_PYTHON}: {' '.join(missing)}")
        pip_download(*missing)
    else:
        sys.exit(f"wheelhouse: still missing {missing}")
    count = len(list(WHEELHOUSE.glob("*.whl")))
    print(f"wheelhouse: {count} wheels in {WHEELHOUSE} ({wheel.name})")
    # The lab's S3-protocol server, at the version the object store's tests run against.
    STAND_IN_WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    pip_download("moto[server]", dest=STAND_IN_WHEELHOUSE)
    count = len(list(STAND_IN_WHEELHOUSE.glob("*.whl")))
    print(f"wheelhouse: {count} wheels for the lab's stand-ins in {STAND_IN_WHEELHOUSE}")


if __name__ == "__main__":
    build()
