"""Run by test_benchmark under torchrun: each process restores its share of a test set; rank 0 evaluates."""

import json
import sys
from pathlib import Path

from accelerate import PartialState

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from refface.evaluation.benchmark import run_benchmark  # noqa: E402
from refface.evaluation.paper_sets import locate_set  # noqa: E402
from tests.evaluation.test_benchmark import Counting  # noqa: E402

data_dir, images, out = (Path(arg) for arg in sys.argv[1:4])
state = PartialState(cpu=True)
restorer = Counting()
data = locate_set("ffhq-ref-severe", data_dir, images)
report = run_benchmark(data, restorer, "counting", out, max_refs=2, sweep=[1], metrics=["psnr"], progress=False,
                       state=state)  # fmt: skip
record = {"rank": state.process_index, "calls": restorer.names, "evaluated": sorted(report.results)}
(out / f"rank{state.process_index}.json").write_text(json.dumps(record))
