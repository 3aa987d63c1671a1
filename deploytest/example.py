"""``deploytest-example``: deploy and verify the bundled example app on this machine, from anywhere.

It copies the example project (a small web service, its fabric.yaml and its deployment tests) into a
directory of its own and runs ``fab deploy-and-verify`` there, as the README's first command does in
a checkout. The service answers on 127.0.0.1:8765; ``--broken`` deploys a release whose health check
fails, to watch it roll back on its own.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

_PACKAGED = Path(__file__).resolve().parent / "examples" / "hello"
_CHECKOUT = Path(__file__).resolve().parent.parent / "examples" / "hello"


def example_source() -> Path:
    """Where the example project is: inside the installed package, else in a source checkout."""
    for path in (_PACKAGED, _CHECKOUT):
        if (path / "fabric.yaml").is_file():
            return path
    raise FileNotFoundError("the example project is missing from this installation")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Copy the example into ``--dir`` and run ``fab deploy-and-verify`` there; its exit code."""
    parser = argparse.ArgumentParser(prog="deploytest-example", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="deploytest-example",
                        help="where to put the example project (default: ./deploytest-example)")
    parser.add_argument("--broken", action="store_true",
                        help="deploy a release whose health check answers 500 (it is rolled back)")
    args = parser.parse_args(argv)
    try:
        source = example_source()
    except FileNotFoundError as error:
        print(f"deploytest-example: {error}", file=sys.stderr)
        return 2
    project = Path(args.dir).resolve()
    if project.exists() and not (project / "fabric.yaml").is_file():
        print(f"deploytest-example: {project} exists and is not an example project; choose another --dir."
              " Nothing was changed.", file=sys.stderr)
        return 2
    shutil.copytree(source, project, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
    print(f"deploytest-example: the example project is in {project}; deploying it on this machine")
    command = [sys.executable, "-m", "fabric"] + (["-f", "broken.yaml"] if args.broken else []) + ["deploy-and-verify"]
    code = subprocess.call(command, cwd=project)
    if code in (0, 1):
        print("deploytest-example: it serves http://127.0.0.1:8765/health; stop it with"
              " kill $(cat /tmp/deploytest-hello/shared/log/hello.pid)")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
