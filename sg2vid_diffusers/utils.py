"""Small helpers shared across the package."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "save_folder_atomically", "PipelineFolder"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    Whatever fails inside the block, ``path`` is never left half-written: either the old file
    (or nothing) or the complete new one. The temporary name keeps the suffix, so writers that
    pick a format from the extension still see it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_folder_atomically(model, output_dir: Path, overwrite: bool) -> None:
    """``model.save_pretrained`` into a temporary folder beside ``output_dir``, then rename it into
    place: a failed save leaves nothing half-written, and an existing folder is only replaced (with
    ``overwrite``) once the new one is complete."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty (pass --overwrite / overwrite=True to replace it)")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    old = None
    try:
        model.save_pretrained(tmp)
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".old", dir=output_dir.parent))
            os.replace(output_dir, old)
        os.replace(tmp, output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if old is not None and old.exists():
            if output_dir.exists():
                shutil.rmtree(old)
            else:
                os.replace(old, output_dir)  # the final rename failed: put the old folder back


class PipelineFolder:
    """What :func:`save_folder_atomically` writes for a pipeline: the pipeline, its model card and
    any files copied beside them (e.g. a source's license files)."""

    def __init__(self, pipe, card: str, files: Iterable[Path] = ()):
        self.pipe, self.card, self.files = pipe, card, list(files)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        self.pipe.save_pretrained(directory)
        Path(directory, "README.md").write_text(self.card)
        for file in self.files:
            shutil.copyfile(file, Path(directory, Path(file).name))


def vae_scale_factor(vae) -> int:
    """How many times an ``AutoencoderKL`` shrinks each side of a frame (2 per down block after the first)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)
