"""What every benchmark script shares: the command line, timing side by side, peak memory, the
machine's description, JSON output and the printed table.

Timing: candidates run interleaved (A B C, then C B A, ...), so a change in the machine's load hits
all of them alike; each figure is the median of its repeats, and a ratio is the median of the
per-round ratios (both members of a pair measured within the same round).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (minus what was allocated before the call).
On CPU neither ``tracemalloc`` (it sees Python's allocator only, not tensor storage) nor
``resource.getrusage`` (a peak over the whole process, never reset) can measure one call, so the
PyTorch profiler's memory events are used: the peak of "Total Allocated" over the call, i.e. the
tensor memory the call allocated on top of what existed before it (weights and inputs excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
RESULTS_DIR = BENCHMARKS_DIR / "results"

MiB = 2**20


# ---------------------------------------------------------------------------------------------------- command line


def base_parser(description: str, name: str) -> argparse.ArgumentParser:
    """The options every script takes; ``name`` gives the default output file."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output", type=Path, default=RESULTS_DIR / f"{name}.json", help="JSON file to write (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default: per script)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per case before timing (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, one repeat: checks that the script runs (figures meaningless)"
    )
    return parser


def check_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """``parser.error`` (exit 2, message naming the option) for an option that is not a positive integer."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def int_list(text: str) -> list[int]:
    """``"8,16,32"`` -> [8, 16, 32] (an argparse ``type``)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def str_list(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    """An argparse ``type`` for a comma-separated subset of ``choices``."""

    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [value for value in values if value not in choices]
        if not values or unknown:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(choices)}, got {text!r}")
        return values

    return parse


def setup(args: argparse.Namespace) -> None:
    """Threads and seed, before any model is built."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)


# ---------------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device | str | None = None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Seconds of each timed repeat of one case."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeats: how noisy the figure is."""
        return (max(self.times) - min(self.times)) / self.median if self.median > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": self.min, "spread": self.spread, "times_s": self.times}


def time_side_by_side(
    cases: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, device: torch.device | str | None = None
) -> dict[str, Timing]:
    """Time each case ``repeats`` times, interleaved, after ``warmup`` untimed rounds.

    Round r runs the cases in order, round r + 1 in reverse order, so that neither drift in the
    machine's load nor the position in a round favours a case.
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
            synchronize(device)
    timings = {name: Timing() for name in cases}
    for round_ in range(repeats):
        order = list(cases.items())
        if round_ % 2:
            order.reverse()
        for name, fn in order:
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            timings[name].times.append(time.perf_counter() - start)
    return timings


def time_once(fn: Callable[[], Any], device: torch.device | str | None = None) -> tuple[Any, float]:
    """(result, seconds) of one call."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def ratio(timings: dict[str, Timing], numerator: str, denominator: str) -> dict[str, float]:
    """Median of the per-round ratios numerator / denominator, with their range."""
    pairs = [a / b for a, b in zip(timings[numerator].times, timings[denominator].times)]
    return {"ratio": statistics.median(pairs), "ratio_min": min(pairs), "ratio_max": max(pairs)}


# ---------------------------------------------------------------------------------------------------- memory


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Peak bytes of tensor memory that one call of ``fn`` allocated on top of what existed before it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return _cpu_peak_memory(fn)


def _cpu_peak_memory(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [
        event["args"]["Total Allocated"]
        for event in events
        if event.get("name") == "[memory]" and event.get("args", {}).get("Device Type") == 0
    ]
    return max(totals, default=0)


def parameter_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the distinct parameters and buffers of ``modules`` (shared tensors counted once)."""
    seen, total = set(), 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            key = tensor.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += tensor.untyped_storage().nbytes()
    return total


def process_peak_rss() -> int:
    """Peak resident memory of this process so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------------- machine


def load_average() -> list[float]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return []


def _cpu_ticks() -> dict[str, int] | None:
    """Aggregate CPU time of the machine from /proc/stat (clock ticks), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {name: int(value) for name, value in zip(names, fields)}


_START: dict[str, Any] = {}


def _start_load_monitor() -> None:
    _START.update(wall=time.perf_counter(), times=os.times(), ticks=_cpu_ticks())


def busy_elsewhere() -> dict[str, float]:
    """Since :func:`machine_info`: the share of the machine's CPU time that went to other processes
    (other than this one; steal by the hypervisor included) and this process's own CPU use per
    thread. Figures measured while ``others_cpu_share`` is well above 0 are disturbed."""
    if not _START or _START["ticks"] is None:
        return {}
    ticks, times = _cpu_ticks(), os.times()
    hz = os.sysconf("SC_CLK_TCK")
    wall = time.perf_counter() - _START["wall"]
    total = sum(ticks.values()) - sum(_START["ticks"].values())
    idle = (ticks["idle"] + ticks["iowait"]) - (_START["ticks"]["idle"] + _START["ticks"]["iowait"])
    mine = (times.user + times.system - _START["times"].user - _START["times"].system) * hz
    steal = ticks["steal"] - _START["ticks"]["steal"]
    return {
        "wall_s": wall,
        "others_cpu_share": max(0.0, (total - idle - mine) / total) if total else 0.0,
        "steal_share": steal / total if total else 0.0,
        "own_cpu_per_thread": mine / hz / wall / torch.get_num_threads() if wall else 0.0,
    }


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (and the start of the load monitor, see :func:`busy_elsewhere`)."""
    import diffusers

    _start_load_monitor()

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load_average(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------------------------------------- output


@dataclass
class Target:
    """A performance target and whether the measurement met it."""

    name: str
    value: float
    limit: float
    met: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "limit": self.limit, "met": self.met, "note": self.note}


def at_most(name: str, value: float, limit: float, note: str = "") -> Target:
    return Target(name, value, limit, value <= limit, note)


def write_json(path: Path, benchmark: str, args: argparse.Namespace, machine: dict, payload: dict) -> None:
    """Write ``payload`` with the machine, the arguments and the load average at the end."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": benchmark,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "machine": {
            **machine,
            "load_average_at_end": load_average(),
            "during_run": busy_elsewhere(),
            "process_peak_rss_mib": process_peak_rss() / MiB,
        },
        **payload,
    }
    if "targets" in document:
        document["targets"] = [t.to_dict() if isinstance(t, Target) else t for t in document["targets"]]
    path.write_text(json.dumps(document, indent=1, default=_json_default) + "\n")
    during = document["machine"]["during_run"]
    if during:
        print(
            f"\nload: average {machine['load_average_at_start']} at the start; during the run other processes took "
            f"{100 * during['others_cpu_share']:.0f}% of the CPU time (steal {100 * during['steal_share']:.0f}%)"
        )
    print(f"wrote {path}")


def _json_default(value: Any) -> Any:
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A plain fixed-width table (markdown pipes, so it pastes into the README)."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(column)] + [len(row[i]) for row in cells]) for i, column in enumerate(columns)]
    print(f"\n{title}")
    print("| " + " | ".join(column.ljust(width) for column, width in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in cells:
        print("| " + " | ".join(value.ljust(width) for value, width in zip(row, widths)) + " |")


def print_targets(targets: list[Target]) -> None:
    print_table(
        "targets",
        ["target", "measured", "limit", "status", "note"],
        [[t.name, t.value, t.limit, "met" if t.met else "MISSED", t.note] for t in targets],
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def ms(seconds: float) -> float:
    return seconds * 1000


def mib(num_bytes: float) -> float:
    return num_bytes / MiB
