"""The README's Python examples run as written."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python_blocks():
    text = (ROOT / "README.md").read_text()
    return [block for block in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "pipe.save_pretrained" in block]


@pytest.mark.parametrize("code", _python_blocks())
def test_pipeline_example_runs(tmp_path, code):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    from sg2vid_diffusers.video_io import read_video

    video = read_video(tmp_path / "untrained.mp4")
    assert video.shape == (8, 64, 64, 3)
    assert (tmp_path / "my-sg2vid" / "model_index.json").is_file()


def test_there_is_a_pipeline_example():
    assert len(_python_blocks()) == 1
