"""The benchmark scripts (benchmarks/, run by hand) still run: each one's --smoke path at tiny sizes,
its argument checks, and bench_gpu.py's clear refusal without CUDA. Figures are not checked."""

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CPU_SCRIPTS = ["bench_conditioning_overhead", "bench_encoder", "bench_scaling", "bench_end_to_end"]


@pytest.fixture
def bench():
    """Import a script by name; the scripts set torch's thread count and seed, which are restored."""
    sys.path.insert(0, str(BENCHMARKS))
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        yield importlib.import_module
    torch.set_num_threads(threads)
    sys.path.remove(str(BENCHMARKS))


def read(path: Path) -> dict:
    document = json.loads(path.read_text())
    assert document["machine"]["torch_threads"] == 2
    for target in document["targets"]:
        assert {"name", "value", "limit", "met"} <= target.keys()
    return document


@pytest.mark.parametrize("name", CPU_SCRIPTS)
def test_smoke_run_prints_and_writes_json(bench, name, tmp_path, capsys):
    output = tmp_path / f"{name}.json"
    bench(name).main(["--smoke", "--output", str(output)])

    document = read(output)
    assert document["benchmark"] == bench(name).NAME
    assert "| " in capsys.readouterr().out  # the table


def test_overhead_checks_that_graph_and_text_models_agree(bench, tmp_path):
    result = bench("bench_conditioning_overhead").main(["--smoke", "--output", str(tmp_path / "o.json")])

    checks = result["rows"][0]["checks"]
    assert len(checks) == 2 and all(error < 1e-4 for error in checks.values())
    assert {row["case"] for row in result["rows"]} >= {"text 16", "graph-only 16", "text 93", "decoupled 77+16"}


def test_encoder_baseline_is_checked_against_the_loop_reference(bench, tmp_path):
    result = bench("bench_encoder").main(["--smoke", "--skip-share", "--output", str(tmp_path / "e.json")])

    assert result["checks"]["published forward == tests/sgdiff_reference.py (float64)"] < 1e-9


def test_end_to_end_measures_a_pipeline_folder(bench, tmp_path):
    setups = bench("setups")
    setups.build_pipeline(setups.get_size("tiny")).save_pretrained(tmp_path / "pipe")

    result = bench("bench_end_to_end").main(
        ["--smoke", "--model", str(tmp_path / "pipe"), "--output", str(tmp_path / "x.json")]
    )

    (row,) = result["rows"]
    assert row["pipeline"].startswith("pipeline folder")
    assert row["seconds_per_video"] > 0 and row["unet_s"] > 0


@pytest.mark.parametrize(
    "name, argv",
    [
        ("bench_conditioning_overhead", ["--sizes", "huge"]),
        ("bench_conditioning_overhead", ["--frames", "0"]),
        ("bench_encoder", ["--batch-sizes", "1,0"]),
        ("bench_scaling", ["--frames", "8,x"]),
        ("bench_end_to_end", ["--model", "/no/such/folder"]),
        ("bench_gpu", ["--resolution", "100"]),
        ("bench_gpu", ["--frames-sweep", "8,-1"]),
        ("bench_gpu", ["--dtype", "int8"]),
    ],
)
def test_bad_arguments_exit_with_a_usage_error(bench, name, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench(name).parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_script_refuses_clearly_without_cuda(bench, tmp_path):
    output = tmp_path / "gpu.json"
    with pytest.raises(RuntimeError, match="needs a CUDA GPU.*--dry-run-cpu"):
        bench("bench_gpu").main(["--output", str(output)])
    assert not output.exists()


def test_gpu_script_runs_every_section_on_a_cpu_dry_run(bench, tmp_path):
    output = tmp_path / "gpu.json"
    result = bench("bench_gpu").main(["--dry-run-cpu", "--output", str(output)])

    assert result["dry_run_cpu"]
    assert all(status.startswith("done") for status in result["sections"].values()), result["sections"]
    assert len(result["training"]) == 3 and len(result["frames_sweep"]) == 2
    assert read(output)["benchmark"] == "gpu"
