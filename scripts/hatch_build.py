"""The build backend's hook (hatchling, ``[tool.hatch.build.targets.wheel.hooks.custom]`` in pyproject.toml): wheels
carry the hot path's compiled twins, and an editable install (``make install``) compiles them beside the sources.

Compiling is ``scripts/accel_build.py``'s job (Cython, then setuptools' ``build_ext`` drives the C compiler).
Without Cython or a compiler the wheel is pure Python, with a warning — unless ``JWTWATCH_REQUIRE_ACCEL=1``
(CI, the Docker image), which makes that a build failure.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accel_build

REQUIRE_ENV = "JWTWATCH_REQUIRE_ACCEL"


class CompiledTwinsHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        self._scratch = Path(tempfile.mkdtemp(prefix="jwtwatch-wheel-"))
        try:
            files = accel_build.compile_twins(self._scratch)
        except accel_build.BuildError as error:
            if os.environ.get(REQUIRE_ENV, "").strip() == "1":
                raise RuntimeError(f"{REQUIRE_ENV}=1 but the compiled hot path was not built: {error}") from None
            self.app.display_warning(f"jwtwatch: {error}; this install runs as pure Python (slower, same results)")
            return
        if version == "editable":  # the package is imported from the source tree: the twins go beside the sources
            accel_build.install_in_place(self._scratch, files)
            return
        for path in files:
            build_data["force_include"][str(self._scratch / path)] = path.as_posix()
        build_data["pure_python"] = False
        build_data["infer_tag"] = True  # cp311-cp311-<platform>: the twins are for this interpreter only

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)
