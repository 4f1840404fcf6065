"""The package as a user gets it: the built wheel, installed into a fresh virtual environment.

The wheel is built from this checkout (as ``pip wheel`` or a release would), installed without
its dependencies into a new venv that borrows them from the test environment (a ``.pth`` line;
the package itself comes only from the wheel), and then used as a user would: the console
script, the synchronous client's import, and a type checker over a program that uses the
public API, which only passes if the wheel ships ``py.typed``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXAMPLE = """
import trio
import trio_broker
import trio_broker.sync


async def publish(seeds: list[str]) -> int:
    async with trio_broker.connect(seeds) as client:
        queue_id: str = await client.create_queue()
        return await client.append(queue_id, {"hello": "world"})


def read_one(seeds: list[str], queue_id: str) -> trio_broker.Message | None:
    with trio_broker.sync.connect(seeds, timeout=5) as client:
        return client.read(queue_id)


if __name__ == "__main__":
    trio.run(publish, ["127.0.0.1:9001"])
"""


def run(*argv: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    """``argv`` without this environment's ``PYTHONPATH``: a checkout put on it (to test the
    checkout's package with another environment's Python) would shadow the wheel in its venv,
    as it never does for a user."""
    kwargs.setdefault("env", {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=300, check=False, **kwargs
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the wheel built from this checkout; returns its bin folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the files git would ship (tracked, or new and not ignored), so that
    # nothing left in the checkout's build/ folder by an earlier build can end up in it.
    source = tmp / "source"
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist", source)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("trio_broker-*.whl")
    # A venv without its own pip (ensurepip alone takes seconds): this environment's pip
    # installs the wheel into it (``pip --python``), as the venv's own pip would.
    made = run(sys.executable, "-m", "venv", "--without-pip", tmp / "venv")
    assert made.returncode == 0, made.stderr
    venv_python = tmp / "venv" / "bin" / "python"
    site = run(venv_python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    # The dependencies come from this test environment; trio_broker must not (its editable
    # install is a finder that a path added by a .pth line does not run).
    Path(site.stdout.strip(), "borrowed-dependencies.pth").write_text(
        sysconfig.get_path("purelib") + "\n"
    )
    got = run(
        sys.executable, "-m", "pip", "--python", venv_python, "install", "-q", "--no-deps", wheel
    )
    assert got.returncode == 0, got.stderr
    return tmp / "venv" / "bin"


def test_the_console_script_reports_its_version(installed):
    result = run(installed / "trio-broker", "--version")
    assert result.returncode == 0, result.stderr
    from trio_broker import __version__

    assert result.stdout.strip() == f"trio-broker {__version__}"


def test_the_synchronous_client_imports_from_the_wheel(installed):
    result = run(
        installed / "python",
        "-c",
        "import trio_broker, trio_broker.sync; print(trio_broker.__file__)",
        cwd=installed,  # not the checkout, whose folder would shadow the wheel
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(installed.parent), result.stdout


def test_a_program_using_the_public_api_type_checks_against_the_wheel(installed, tmp_path):
    program = tmp_path / "program.py"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}

    def check(source: str) -> subprocess.CompletedProcess[str]:
        program.write_text(source)
        python = installed / "python"
        # A cache of this test's own: the second check reads the wheel's modules from it.
        mypy = (sys.executable, "-m", "mypy", "--strict", "--cache-dir", tmp_path / "cache")
        return run(*mypy, "--python-executable", python, program, cwd=tmp_path, env=env)

    result = check(textwrap.dedent(EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    # And the check has teeth: mypy read the wheel's own signatures (without py.typed it
    # would refuse the import under --strict), so a wrong type for a public name is an error.
    broken = check(textwrap.dedent(EXAMPLE) + "\nx: int = trio_broker.sync.connect\n")
    assert broken.returncode == 1, broken.stdout
    assert "def connect(seeds:" in broken.stdout, broken.stdout
