"""The built-in SG-Shapes model, shipped inside the package as a diffusers pipeline folder."""

from __future__ import annotations

from pathlib import Path

BUILTIN_MODEL_DIR = Path(__file__).resolve().parent / "sg-shapes"


def builtin_model_path() -> Path:
    """The folder of the built-in pipeline.

    Raises:
        FileNotFoundError: when this copy of the package ships no built-in model.
    """
    if not (BUILTIN_MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no built-in model in this installation ({BUILTIN_MODEL_DIR} has no model_index.json); "
            "pass a pipeline folder instead (sg2vid generate --model DIR)"
        )
    return BUILTIN_MODEL_DIR
