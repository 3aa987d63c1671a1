"""setup.cfg holds the metadata; this adds the example app to the built package, from its one copy
in examples/hello, so that ``deploytest-example`` works from an installed wheel."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

EXAMPLE = Path(__file__).resolve().parent / "examples" / "hello"


class BuildWithExample(build_py):
    """build_py, plus examples/hello copied to deploytest/examples/hello in the build."""

    def run(self) -> None:
        super().run()
        if EXAMPLE.is_dir():
            target = Path(self.build_lib) / "deploytest" / "examples" / "hello"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))


setup(cmdclass={"build_py": BuildWithExample})
