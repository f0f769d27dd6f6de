"""`make demo`: the whole small-model lifecycle on this machine, from nothing, as one pipeline.

No pretrained weights can be downloaded, so the demo pipeline
(examples/demo-pipeline.yaml) first trains its own teacher on two-digit
addition, a task whose answers can be checked exactly, and serves it, so that
synthesis calls it over the OpenAI API exactly as it would a hosted teacher.
Then: synthesize -> distill a student 6x smaller -> convert it to int4 ->
deploy the student, and the int4 student as a canary beside it -> evaluate
teacher, student and int4 canary on the same held-out prompts -> the gate
promotes the canary or rolls it back. The demo then runs the same file again:
every stage is reused. Everything it starts, it stops.

With --chat it runs the chat variant (examples/demo-chat-pipeline.yaml): the
same task asked as a conversation with a system prompt, trained with a ChatML
template, synthesized and evaluated through `/chat/completions`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from slmops.api.v1 import pipeline_pb2
from slmops.cli import client
from slmops.cli import stack as local_stack
from slmops.cli.pipeline_commands import follow, pipeline_spec, stages_of, summary
from slmops.core import settings, tracing
from slmops.demo.report import count_trace_spans, write_demo_report

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
PIPELINE = EXAMPLES / "demo-pipeline.yaml"
CHAT_PIPELINE = EXAMPLES / "demo-chat-pipeline.yaml"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_pipeline(file: Path, label: str) -> tuple[pipeline_pb2.PipelineRun, float]:
    """Create a run of the file, show its stages live, and return the finished run and its wall time."""
    started = time.time()
    spec = pipeline_spec(str(file), say=lambda line: say(f"  {line}"))
    stub = client.stub("pipeline")
    run = client.call(stub.CreatePipelineRun, pipeline_pb2.CreatePipelineRunRequest(spec=spec), timeout=120.0)
    say(f"{label}: run {run.id} (every stage's spec checked by its service first)")
    run = follow(run.id, stages_of(spec.definition_yaml))
    return run, time.time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slmops.demo", description=__doc__)
    parser.add_argument(
        "--chat", action="store_true", help="the chat variant: messages records and /chat/completions"
    )
    parser.add_argument(
        "--out",
        help="where the report and all state go (default: build/demo, or build/demo-chat with --chat)",
    )
    parser.add_argument("--pipeline", help="the pipeline file to run (default: the variant's example)")
    parser.add_argument("--keep", action="store_true", help="leave the stack running at the end")
    args = parser.parse_args(argv)
    variant = "chat" if args.chat else "completion"
    args.pipeline = args.pipeline or str(CHAT_PIPELINE if args.chat else PIPELINE)
    out_dir = Path(args.out or ("build/demo-chat" if args.chat else "build/demo")).resolve()
    data_dir = out_dir / "data"
    if data_dir.exists():
        local_stack.down(data_dir, say=lambda *_: None)
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    os.environ[settings.VARS["data_dir"].env] = str(data_dir)
    say(f"slmops demo ({variant}): the whole small-model lifecycle on this machine, as one pipeline file")
    say(f"  {args.pipeline}")
    say("starting the local stack (Ray head + six services)")
    begin = time.time()
    record = local_stack.up(data_dir, free_ports=True, say=lambda line: say(f"  {line}"))
    for name, info in record["services"].items():
        os.environ[settings.VARS[f"{name}_addr"].env] = info["address"]
    tracing.setup_tracing("demo")
    code = 1
    try:
        with tracing.tracer().start_as_current_span("demo"):
            trace_id = tracing.current_trace_id()
            first, first_s = run_pipeline(Path(args.pipeline), "first run")
            say(summary(first))
            say("running the same file again: every stage's inputs and spec are unchanged")
            second, second_s = run_pipeline(Path(args.pipeline), "second run")
            say(summary(second))
        tracing.shutdown_tracing()
        time.sleep(1.5)  # let every process flush its spans
        report = write_demo_report(out_dir, {
            "variant": variant, "first": first, "second": second,
            "first_seconds": first_s, "second_seconds": second_s, "total_seconds": time.time() - begin, "trace_id": trace_id,
            "trace_spans": count_trace_spans(data_dir, trace_id),
        })  # fmt: skip
        print(report["markdown"])
        say(
            f"report: {out_dir / 'report.md'}, {out_dir / 'report.json'} and the evaluation page {report['html']}"
        )
        code = 0 if report["ok"] else 1
    except Exception as exc:  # noqa: BLE001 - the demo says what failed, then stops what it started
        say(f"demo failed: {type(exc).__name__}: {exc}")
    finally:
        client.close()
        if args.keep:
            say(f"stack left running; stop it with: slmops --data-dir {data_dir} down")
        else:
            say("stopping everything the demo started")
            local_stack.down(data_dir, say=lambda line: say(f"  {line}"))
    return code


if __name__ == "__main__":
    sys.exit(main())
