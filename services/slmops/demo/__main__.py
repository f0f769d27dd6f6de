"""`make demo`: the whole small-model lifecycle on this machine, from nothing.

No pretrained weights can be downloaded, so the demo first makes its own
teacher: it trains a tokenizer and a small model on two-digit addition (a task
whose answers can be checked exactly). It serves that teacher through the
serving service, so synthesis calls it over the OpenAI API exactly as it would
a hosted teacher. Then: synthesize -> distill a student at least 5x smaller ->
convert it to int4 -> deploy the student, and the int4 student as a canary
beside it -> evaluate teacher, student and int4 canary on the same held-out
prompts -> promote the canary when the gate passes (roll it back when it
fails). Everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from slmops.cli import client
from slmops.cli import stack as local_stack
from slmops.cli.synth_commands import synth_summary
from slmops.core import artifacts, settings, tracing
from slmops.demo import steps, task
from slmops.demo.report import count_trace_spans, write_demo_report
from slmops.demo.steps import DemoFailed, say
from slmops.testing.tiny import build_model, count_parameters, train_tokenizer


def prepare_inputs(inputs: Path) -> dict[str, str]:
    """Tokenizer, untrained teacher, ground truth and prompt files; returns their URIs."""
    sets = task.demo_sets()
    tokenizer_dir = train_tokenizer(task.tokenizer_corpus(), inputs / "tokenizer", task.TOKENIZER_VOCAB_SIZE)
    teacher_init = build_model(inputs / "teacher-init", tokenizer_dir, seed=task.SEED, **task.TEACHER_SHAPE)
    ground_truth_prompts = task.write_prompts(sets["teacher_train"], inputs / "ground-truth.jsonl")
    dataset = task.write_dataset(sets["teacher_train"], sets["teacher_validation"], inputs / "ground-truth")
    artifacts.finalize(str(dataset), "dataset", spec={"source": "two-digit addition, exact answers"},
                       parents=[str(ground_truth_prompts)], trace_id=tracing.current_trace_id())
    prompts = task.write_prompts(sets["synthesis"], inputs / "synthesis-prompts.jsonl")
    held_out = task.write_prompts(sets["eval"], inputs / "held-out.jsonl")
    return {
        "teacher_init": artifacts.to_uri(teacher_init),
        "ground_truth": artifacts.to_uri(dataset),
        "prompts": artifacts.to_uri(prompts),
        "held_out": artifacts.to_uri(held_out),
    }


CANARY_PERCENT = 20
EXAMPLE_PRICE = (3.0, 3.0)  # per million prompt and completion tokens: a hosted large teacher's order of price


def run_flow(out_dir: Path, data_dir: Path) -> dict:
    started = time.time()
    inputs = prepare_inputs(data_dir / "inputs")
    say("[1/7] training the teacher from scratch on ground truth (no weights can be downloaded here)")
    teacher_job = steps.train("teacher", "FULL", inputs["teacher_init"], inputs["ground_truth"],
                              task.TEACHER_HPARAMS, task.RESOURCES)
    teacher_uri = teacher_job.status.output.uri
    say("[2/7] serving the teacher behind the OpenAI API")
    teacher = steps.deploy("teacher", teacher_uri)
    say(f"  teacher: {teacher.url}/openai/v1")
    say("[3/7] synthesis: the teacher answers the prompts over the OpenAI API")
    dataset_job = steps.synthesize(inputs["prompts"], f"{teacher.url}/openai/v1", "teacher", max_tokens=6,
                                   price_per_million=EXAMPLE_PRICE, drop_truncated=True)
    dataset_uri = dataset_job.status.output.uri
    say(f"  what the teacher was asked and what was kept (cost at an example price of ${EXAMPLE_PRICE[0]:g} / "
        f"${EXAMPLE_PRICE[1]:g} per million prompt / completion tokens):")
    say(synth_summary(dict(dataset_job.status.metrics)))
    say("[4/7] distilling a smaller student on the teacher's answers")
    student_job = steps.train("student", "SFT_DISTILL", teacher_uri, dataset_uri, task.STUDENT_HPARAMS,
                              task.RESOURCES, from_config=True, overrides=task.STUDENT_OVERRIDES)
    student_uri = student_job.status.output.uri
    say("[5/7] converting the student to ONNX Runtime GenAI int4 (Olive ModelBuilder)")
    int4_uri = steps.convert(student_uri, task.INT4_OPTIONS).status.output.uri
    say(f"[6/7] deploying the student, then the int4 student as a {CANARY_PERCENT}% canary beside it")
    fp32 = steps.revision_of(steps.deploy("student", student_uri), 1)
    deployment, int4 = steps.canary("student", int4_uri, CANARY_PERCENT)
    say(f"  student: {deployment.url}/openai/v1 - revision {fp32.number} (fp32) "
        f"{steps.revision_of(deployment, fp32.number).traffic_percent}%, revision {int4.number} (int4) "
        f"{int4.traffic_percent}%")
    say("[7/7] evaluating teacher, the fp32 student and the int4 canary on the same held-out prompts")
    evaluation = steps.evaluate(
        inputs["held_out"],
        [steps.target("teacher", "teacher"), steps.target("student", revision=fp32, model="student"),
         steps.target("student-int4", revision=int4, model="student")],
        reference="teacher", candidate="student-int4", max_tokens=6, min_retention=0.5,
    )  # fmt: skip
    rollout = {"canary_percent": CANARY_PERCENT, "canary_revision": int4.number, "evaluation_passed":
               evaluation.verdict.passed}  # fmt: skip
    started = time.time()
    if evaluation.verdict.passed:
        say(f"  the gate passed: promoting revision {int4.number} (int4) to all of the student's traffic")
        final = steps.promote("student", evaluation.status.output.uri)
    else:
        say(f"  the gate failed: rolling the canary back ({'; '.join(evaluation.verdict.reasons)})")
        final = steps.rollback("student")
    rollout.update(seconds=round(time.time() - started, 2), serving_revision=final.serving_revision,
                   traffic={r.number: r.traffic_percent for r in final.revisions if r.traffic_percent})  # fmt: skip
    return {
        "wall_seconds": time.time() - started,
        "inputs": inputs,
        "teacher_uri": teacher_uri,
        "dataset_uri": dataset_uri,
        "student_uri": student_uri,
        "int4_uri": int4_uri,
        "deployment_artifact": int4.artifact.uri,
        "rollout": rollout,
        "evaluation": evaluation,
        "parameters": {
            "teacher": count_parameters(artifacts.local_path(teacher_uri)),
            "student": count_parameters(artifacts.local_path(student_uri)),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slmops.demo", description=__doc__)
    parser.add_argument("--out", default="build/demo", help="where the report and all state go")
    parser.add_argument("--keep", action="store_true", help="leave the stack running at the end")
    args = parser.parse_args(argv)
    out_dir = Path(args.out).resolve()
    data_dir = out_dir / "data"
    if data_dir.exists():
        local_stack.down(data_dir, say=lambda *_: None)
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    import os

    os.environ[settings.VARS["data_dir"].env] = str(data_dir)
    say("slmops demo: the whole small-model lifecycle on this machine")
    say("starting the local stack (Ray head + six services)")
    begin = time.time()
    record = local_stack.up(data_dir, free_ports=True, say=lambda line: say(f"  {line}"))
    for name, info in record["services"].items():
        os.environ[settings.VARS[f"{name}_addr"].env] = info["address"]
    tracing.setup_tracing("demo")
    code = 1
    try:
        with tracing.tracer().start_as_current_span("demo") as span:
            trace_id = tracing.current_trace_id()
            span.set_attribute("slmops.out_dir", str(out_dir))
            flow = run_flow(out_dir, data_dir)
        flow["trace_id"] = trace_id
        flow["total_seconds"] = time.time() - begin
        tracing.shutdown_tracing()
        time.sleep(1.5)  # let every process flush its spans
        flow["trace_spans"] = count_trace_spans(data_dir, trace_id)
        report = write_demo_report(out_dir, flow)
        print(report["markdown"])
        say(f"report: {out_dir / 'report.md'} and {out_dir / 'report.json'}")
        code = 0 if report["ok"] else 1
    except DemoFailed as exc:
        say(f"demo failed: {exc}")
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
