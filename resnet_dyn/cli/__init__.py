"""The commands: argument handling, printing and exit codes; the work is done by the library.

``resnet-dyn`` (:mod:`.train`), ``resnet-dyn-analyze`` (:mod:`.analyze`),
``resnet-dyn-report`` (:mod:`.report`).
"""

from pathlib import Path

# The configs live beside the package in the repository (installed with `pip install -e .`).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
