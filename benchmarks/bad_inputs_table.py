"""The bad-input table of BENCHMARKS.md (issue 14): each case of tests/test_cli_bad_inputs.py run
through ``layerprune.layerwise.cli.main`` in-process, with the model loader and ``solve`` patched
to refuse (a case that reaches them is counted as not caught), printed as a Markdown table.

    .venv/bin/python benchmarks/bad_inputs_table.py
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_cli_bad_inputs import CASES, argv_of, make_files, runnable  # noqa: E402

import layerprune  # noqa: E402
import layerprune.layerwise.models as models  # noqa: E402
import layerprune.layerwise.pipeline as pipeline  # noqa: E402
from layerprune.layerwise.cli import main  # noqa: E402


def run_case(argv: list[str]) -> tuple[int, str, list[str]]:
    reached: list[str] = []

    def refuse(what):
        def fn(*a, **k):
            reached.append(what)
            raise RuntimeError(f"{what} reached")
        return fn

    saved = models.load_model, pipeline.load_model, layerprune.solve
    models.load_model = pipeline.load_model = refuse("load_model")
    layerprune.solve = refuse("solve")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                status = main(argv)
            except Exception as e:  # noqa: BLE001 - a case that escapes is reported, not raised
                status = f"raised {type(e).__name__}"
    finally:
        models.load_model, pipeline.load_model, layerprune.solve = saved
    return status, err.getvalue(), reached


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main_table() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_files(Path(tmp))
        rows, caught, total = [], 0, 0
        for base, bad, keyword, needs in CASES:
            if not runnable(needs):
                continue
            total += 1
            argv = argv_of(base, bad, paths)
            status, err, reached = run_case(argv)
            lines = err.splitlines()
            ok = (status == 2 and len(lines) == 1 and lines[0].startswith("layerprune: error:")
                  and keyword in lines[0] and not reached and "Traceback" not in err)
            caught += ok
            command = " ".join([base[0] if base else bad[0]] + (bad if base else bad[1:]))
            message = (lines[0] if lines else f"(status {status})").replace(tmp, "…")
            command = command.format(**{k: v.replace(tmp, "…") for k, v in paths.items()})
            rows.append(f"| `{command}` | {message.replace('|', '/')} | {'yes' if ok else 'NO'} |")
    print(f"{caught} of {total} bad inputs caught (exit 2, one line naming the problem, before any model "
          f"load or solve); {cpu_name()}, {os.cpu_count()} cores, no GPU; {time.strftime('%Y-%m-%d')}\n")
    print("| command (the bad part) | message | caught |")
    print("| --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main_table()
