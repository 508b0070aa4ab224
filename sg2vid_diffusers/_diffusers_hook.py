"""Let ``diffusers.DiffusionPipeline.from_pretrained(folder)`` find our pipeline classes.

diffusers resolves a folder's ``model_index.json`` ``_class_name`` with ``getattr(diffusers, name)``.
Our classes are not in diffusers, so once ``sg2vid_diffusers`` is imported the diffusers module
answers those names by importing ours, lazily: importing sg2vid_diffusers does not import
diffusers, and importing diffusers later still gets the hook.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import types

# Class name -> module that defines it.
EXPORTED = {
    "SceneGraphToVideoPipeline": "sg2vid_diffusers.pipelines.pipeline_sg2vid",
}


def _install(module: types.ModuleType) -> None:
    base = type(module)
    if getattr(base, "_sg2vid_hooked", False):
        return

    class _WithSg2Vid(base):  # type: ignore[misc, valid-type]
        _sg2vid_hooked = True

        def __getattr__(self, name: str):
            if name in EXPORTED:
                return getattr(importlib.import_module(EXPORTED[name]), name)
            return super().__getattr__(name)

    module.__class__ = _WithSg2Vid


class _Finder(importlib.abc.MetaPathFinder):
    """Hooks diffusers right after it is first imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "diffusers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_hook(module):
            exec_module(module)
            _install(sys.modules.get(fullname, module))

        spec.loader.exec_module = exec_and_hook  # type: ignore[method-assign]
        return spec


def install() -> None:
    if "diffusers" in sys.modules:
        _install(sys.modules["diffusers"])
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
