"""tsdebug lint: the trap suite, clean models, scripted models, files absent, counterexamples."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from engine import Session
from engine.check.lint import lint_session
from tsdebug.cli import main
import models as M
import trap_models as T

HERE = os.path.dirname(__file__)


def line_of(cls) -> int:
    """The line of ``cls.LINE`` in trap_models.py."""
    with open(os.path.join(HERE, "trap_models.py")) as f:
        for i, text in enumerate(f, 1):
            if text.strip() == cls.LINE:
                return i
    raise AssertionError(cls.LINE)


EXPECT = {
    # trap: (kind, what was frozen)
    "frozen-branch": ("frozen-branch", "took the if branch"),
    "unrolled-loop": ("unrolled-loop", "unrolled 3 times"),
    "baked-scalar": ("baked-scalar", "= 2 became a constant"),
    "python-state": ("python-state", "took neither"),
    "dim-branch": ("frozen-branch", "took the if branch"),
    "list-loop": ("unrolled-loop", "unrolled 3 times"),
    "nonzero-count": ("baked-shape", "len(idx) = 2 became a constant"),
    "while-loop": ("unrolled-loop", "unrolled 3 times"),
    "len-list": ("frozen-branch", "took the if branch"),
    "shape-arith": ("baked-scalar", "int(half) = 3 became a constant"),
    "shape-branch": ("frozen-branch", "took the if branch"),
}


def trace_to(path, cls, example):
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(cls().eval(), example, check_trace=False), str(path))
    return str(path)


@pytest.mark.parametrize("trap", list(EXPECT))
def test_trap_found_with_its_line(tmp_path, trap):
    cls, example = T.TRAPS[trap]
    path = trace_to(tmp_path / f"{trap}.pt", cls, example)
    report = lint_session(Session(path))
    kind, frozen = EXPECT[trap]
    hits = [f for f in report.findings if f.kind == kind and f.line == line_of(cls)]
    assert hits, [(f.kind, f.line, f.frozen) for f in report.findings]
    assert frozen in hits[0].frozen
    assert hits[0].file.endswith("trap_models.py") and hits[0].text == cls.LINE
    assert hits[0].nodes or kind in ("python-state", "baked-shape")


def test_submodule_instances_are_separate(tmp_path):
    path = trace_to(tmp_path / "pads.pt", T.TwoPads, (torch.randn(2, 5), torch.randn(2, 4)))
    report = lint_session(Session(path))
    by_instance = {f.module_path: f for f in report.findings if f.line == line_of(T.Pad)}
    assert by_instance["odd"].frozen == "took the if branch"
    assert by_instance["even"].frozen.startswith("took neither")


def test_baked_device_from_a_cuda_archive():
    report = lint_session(Session(os.path.join(HERE, "data", "cuda_baked_device.pt")))
    dev = [f for f in report.findings if f.kind == "baked-device"]
    assert dev and "cuda:0" in dev[0].frozen and dev[0].file.endswith("fixtures_cuda.py") and dev[0].line == 29


@pytest.mark.parametrize("name,example", [
    ("ConvNet", (torch.randn(1, 3, 16, 16),)),
    ("TransformerNet", (torch.randn(2, 5, 16),)),
    ("LSTMNet", (torch.randn(2, 5, 6),)),
])
@pytest.mark.parametrize("mode", ["trace", "script"])
def test_clean_models_have_no_findings(archive, name, example, mode):
    path = archive(getattr(M, name)(), mode, example=example)
    report = lint_session(Session(path))
    assert report.findings == []
    if mode == "script":
        assert any("scripted" in n for n in report.notes)


def test_cli_exit_codes_and_json(tmp_path, capsys):
    cls, example = T.TRAPS["frozen-branch"]
    path = trace_to(tmp_path / "b.pt", cls, example)
    assert main(["lint", path]) == 1
    out = capsys.readouterr().out
    assert "frozen-branch" in out and cls.LINE in out
    assert main(["lint", path, "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    f = rep["findings"][0]
    for key in ("kind", "file", "line", "text", "frozen", "evidence", "confidence", "nodes", "module_path"):
        assert key in f
    clean = trace_to(tmp_path / "c.pt", M.LSTMNet, (torch.randn(2, 5, 6),))
    assert main(["lint", clean]) == 0
    assert main(["lint", str(tmp_path / "nope.pt")]) == 2


@pytest.mark.parametrize("trap,count", [("SizeLoop", 4), ("WhileNorm", 3), ("ListLoop", 3)])
def test_source_file_absent_loops_from_repeats(tmp_path, trap, count):
    """Without the file, the archive's stacks still show a loop's repeats."""
    src = tmp_path / "gone_model.py"
    shutil.copy(os.path.join(HERE, "trap_models.py"), src)
    examples = {"SizeLoop": "(torch.randn(4, 3),)", "WhileNorm": "(torch.full((4,), 3.0),)",
                "ListLoop": "([torch.randn(2), torch.randn(2), torch.randn(2)],)"}
    script = textwrap.dedent(f"""
        import sys, torch, warnings
        warnings.simplefilter("ignore")
        sys.path.insert(0, {str(tmp_path)!r})
        import gone_model as T
        torch.jit.save(torch.jit.trace(T.{trap}(), {examples[trap]}, check_trace=False), {str(tmp_path / 'loop.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    os.remove(src)
    report = lint_session(Session(str(tmp_path / "loop.pt")))
    loops = [f for f in report.findings if f.kind == "unrolled-loop"]
    assert loops and loops[0].frozen == f"unrolled {count} times"
    assert loops[0].file.endswith("gone_model.py") and loops[0].confidence == "low"
    # the repeated line is the loop's body
    cls = getattr(T, trap)
    with open(os.path.join(HERE, "trap_models.py")) as f:
        text = f.read().splitlines()
    assert text[line_of(cls) - 1].strip() == cls.LINE and loops[0].line > line_of(cls)
    assert any("not on disk" in n for n in report.notes)


def spec_of(value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(spec_of(v) for v in value) + "]"
    return "float32[" + ",".join(map(str, value.shape)) + "]"


# every trap that can disagree on some input (self.training cannot, in eval)
@pytest.mark.parametrize("trap", [t for t in EXPECT if t != "python-state"])
def test_counterexample_reproduces_with_diff(tmp_path, capsys, trap):
    cls, example = T.TRAPS[trap]
    path = trace_to(tmp_path / f"{trap}.pt", cls, example)
    eager = os.path.join(HERE, "trap_models.py") + ":" + cls.__name__
    assert main(["lint", path, "--eager", eager, "--input", spec_of(example[0]), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["findings"][0]["counterexample"], rep
    assert rep["reproduce"].startswith("tsdebug diff")
    # the saved input makes tsdebug diff disagree (1) and say where: the archive raising where the
    # Python does not, a first divergence, or where the two runs part
    code = main(["diff", path, "--eager", eager, "--inputs", rep["counterexample_file"]])
    out, err = capsys.readouterr()
    assert code == 1, err
    if "archive raising" in rep["findings"][0]["counterexample"]:
        assert "none from the archive: it raised at" in out
    else:
        assert "first divergence\n" in out or "where they part" in out, out


def test_trace_warnings_with_eager(tmp_path, capsys):
    """Retracing the Python keeps torch's TracerWarnings as findings where lint saw nothing else."""
    import trap_models as T2

    path = trace_to(tmp_path / "nz.pt", T2.NonzeroCount, T2.TRAPS["nonzero-count"][1])
    eager = os.path.join(HERE, "trap_models.py") + ":NonzeroCount"
    assert main(["lint", path, "--eager", eager, "--input", "float32[3]", "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    lines = {(f["kind"], f["line"]) for f in rep["findings"]}
    assert ("baked-shape", line_of(T2.NonzeroCount)) in lines
    # the warning on the same line is not reported twice
    assert not any(k == "trace-warning" and ln == line_of(T2.NonzeroCount) for k, ln in lines)


@pytest.mark.parametrize("trap,conversion", [("frozen-branch", "__bool__"), ("baked-scalar", "item"),
                                             ("unrolled-loop", "size"), ("nonzero-count", "__len__")])
def test_eager_conversions_confirm_findings(tmp_path, capsys, trap, conversion):
    cls, example = T.TRAPS[trap]
    path = trace_to(tmp_path / f"{trap}.pt", cls, example)
    eager = os.path.join(HERE, "trap_models.py") + ":" + cls.__name__
    assert main(["lint", path, "--eager", eager, "--input", spec_of(example[0]), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    line = line_of(cls)
    assert {"conversion": conversion, "file": os.path.join(HERE, "trap_models.py"), "line": line} in rep["conversions"] \
        or any(c["conversion"] == conversion and c["line"] == line for c in rep["conversions"])
    hit = next(f for f in rep["findings"] if f["line"] == line)
    # confirmed in its evidence; its confidence is lint's own, as without --eager
    alone = next(f for f in lint_session(Session(path)).findings if f.line == line and f.kind == hit["kind"])
    assert "confirmed" in hit["evidence"] and hit["confidence"] == alone.confidence


@pytest.mark.parametrize("images", [1, 3])
def test_unrolled_loop_counts_iterations_not_repeated_ops(archive, images):
    """One iteration whose body spans lines and calls a helper twice is one iteration."""
    example = ([torch.randn(5, 4) for _ in range(images)],)
    path = archive(T.PostprocessLoop(), "trace", example=example)
    report = lint_session(Session(path))
    loops = [f for f in report.findings if f.kind == "unrolled-loop" and f.text == T.PostprocessLoop.LINE]
    assert len(loops) == 1
    assert loops[0].frozen == f"unrolled {images} time{'s' if images != 1 else ''}"


def test_numbers_written_in_the_code_are_not_baked_shapes(archive):
    """(3, 4) boxes: the index 3 equals a dimension of the example, but the code says 3."""
    path = archive(T.WrittenIndex(), "trace", example=(torch.randn(3, 4),))
    report = lint_session(Session(path))
    assert [f for f in report.findings if f.kind == "baked-shape"] == []


def test_branches_a_trace_keeps_right_are_not_findings(archive):
    x = torch.ones(2, 4)  # sum > 0: the frozen branch is the one on data
    path = archive(T.Configured(), "trace", example=(x,))
    report = lint_session(Session(path))
    branches = [f for f in report.findings if f.kind == "frozen-branch"]
    assert [f.text for f in branches] == [T.Configured.LINE]


def test_text_report_shows_a_line_frozen_in_several_modules_once(archive, capsys):
    from tsdebug.cli import main

    path = archive(T.TwoGates(), "trace", example=(torch.ones(3),))
    assert main(["lint", path]) == 1
    out = capsys.readouterr().out
    assert "findings   2 at 1 line of Python" in out
    assert out.count("if x.sum() > 0:") == 1 and "[first, second]" in out


def test_tests_on_flags_types_and_tracing_are_not_findings(archive):
    path = archive(T.TransformersStyle(), "trace", example=(torch.ones(2, 3),))
    report = lint_session(Session(path))
    assert [f.text for f in report.findings] == [T.TransformersStyle.LINE]


def test_loops_over_module_lists_are_not_findings(archive):
    """``for module in self`` and a module-list loop nested in another (HRNet) are the
    architecture; only the loop on data is frozen (one finding per instance)."""
    path = archive(T.FuseNet(), "trace", example=(torch.ones(2, 4), torch.ones(2, 4)))
    report = lint_session(Session(path))
    assert [f.text for f in report.findings] == [T.Fuse.LINE, T.Fuse.LINE]
    assert [f.frozen for f in report.findings] == ["unrolled 2 times"] * 2


def test_configuration_tests_are_not_findings_and_rank_tests_are_low(archive):
    path = archive(T.ConfigTests(), "trace", example=(torch.ones(2, 4), torch.ones(2, 1, 4)))
    report = lint_session(Session(path))
    found = sorted((f.text, f.confidence) for f in report.findings)
    assert found == sorted([(T.ConfigTests.LINE, "medium"), (T.ConfigTests.RANK, "low")]), found


def test_trace_warning_is_named_by_its_first_sentence(tmp_path, capsys):
    import trap_models as T2

    path = trace_to(tmp_path / "tc.pt", T2.TensorConstant, (torch.ones(3),))
    eager = os.path.join(HERE, "trap_models.py") + ":TensorConstant"
    assert main(["lint", path, "--eager", eager, "--input", "float32[3]", "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    warned = [f for f in rep["findings"] if f["kind"] == "trace-warning"]
    assert [f["frozen"] for f in warned] == ["torch.tensor results are registered as constants in the trace"]
    assert warned[0]["text"] == "scale = torch.tensor(2.0)"


@pytest.mark.parametrize("training", [False, True])
def test_training_branch_weighs_the_mode_it_was_traced_in(tmp_path, training):
    """Traced in eval mode, `if self.training:` froze what inference wants (low); traced in
    training mode, dropout is in the archive for good (high)."""
    model = T.TrainingFlag().train(training)
    path = str(tmp_path / "m.pt")
    torch.jit.save(torch.jit.trace(model, (torch.randn(3),), check_trace=False), path)
    found = [f for f in lint_session(Session(path)).findings if f.kind == "python-state"]
    assert [f.text for f in found] == [T.TrainingFlag.LINE]
    assert found[0].confidence == ("high" if training else "low")
    assert ("trace after model.eval()" in found[0].evidence) == training
    assert found[0].frozen == ("took the if branch" if training else "took neither: the branch was skipped")


def test_numbers_that_are_not_tensors_are_not_baked_scalars(archive):
    path = archive(T.Literals(), "trace", example=(torch.randn(2, 3),))
    found = [(f.kind, f.text) for f in lint_session(Session(path)).findings]
    assert found == [("baked-scalar", T.Literals.LINE)], found


def test_min_confidence_filters_the_report_and_the_exit_code(tmp_path, capsys):
    """A model traced in eval mode with only a self.training branch: a low finding."""
    path = trace_to(tmp_path / "tf.pt", T.TrainingFlag, (torch.randn(3),))
    assert main(["lint", path]) == 1
    assert "python-state (low)" in capsys.readouterr().out
    assert main(["lint", path, "--min-confidence", "medium"]) == 0
    out = capsys.readouterr().out
    assert "findings   none" in out and "1 finding under confidence medium not shown" in out
    assert main(["lint", path, "--min-confidence", "medium", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["findings"] == []


def test_kind_of_tensor_is_not_data_and_rank_loops_are_low(archive):
    path = archive(T.KindOfTensor(), "trace", example=(torch.randn(2, 3),))
    found = [(f.kind, f.text, f.confidence) for f in lint_session(Session(path)).findings]
    assert found == [("unrolled-loop", T.KindOfTensor.LOOP, "low")], found


def test_hugging_face_idioms_are_not_findings(archive):
    path = archive(T.HFIdioms(), "trace", example=(torch.ones(2, 4),))
    found = sorted((f.text, f.confidence) for f in lint_session(Session(path)).findings)
    assert found == sorted([(T.HFIdioms.RANK, "low"), (T.HFIdioms.LINE, "medium")]), found


def test_encoder_decoder_idioms_are_not_findings_and_guarded_tests_are_low(archive):
    # T5's `if use_cache is True:` (raises only), GPT-J's `if rotary:` (every call passes a literal),
    # BART's `if is_cross_attention and past_key_value is not None and is_updated:` traced without a cache
    path = archive(T.EncoderDecoderIdioms(), "trace", example=(torch.ones(2, 4),))
    found = sorted((f.text, f.confidence) for f in lint_session(Session(path)).findings)
    assert found == sorted([(T.EncoderDecoderIdioms.GUARD, "low"), (T.EncoderDecoderIdioms.LINE, "medium")]), found


def test_loop_over_a_helpers_fixed_length_list_is_not_a_finding(archive):
    path = archive(T.HashBuckets(), "trace", example=(torch.ones(2, 4),))
    found = {(f.text, f.kind) for f in lint_session(Session(path)).findings}
    assert ("for i, b in enumerate(buckets):", "unrolled-loop") not in found, found
    assert (T.HashBuckets.LINE, "unrolled-loop") in found, found
    assert ("for row in x:", "unrolled-loop") in found, found


def test_a_branch_on_a_dimension_read_into_a_local_says_it_reads_a_shape(tmp_path):
    """``h, w = x.shape[-2:]`` then ``if h > 1:``: the evidence names a shape, not tensor data."""
    cls, example = T.TRAPS["shape-branch"]
    path = trace_to(tmp_path / "shape.pt", cls, example)
    hit = next(f for f in lint_session(Session(path)).findings if f.line == line_of(cls))
    assert hit.confidence == "medium" and hit.evidence.startswith("the test reads a shape (h > 1)"), hit.evidence


def line_of_text(text) -> int:
    with open(os.path.join(HERE, "trap_models.py")) as f:
        return next(i for i, t in enumerate(f, 1) if t.strip() == text)


@pytest.mark.parametrize("name", list(T.ROW_TRAPS))
def test_iterating_over_a_tensors_rows_is_an_unrolled_loop(tmp_path, name):
    """``for b in boxes:`` whose body only indexes and compares leaves no ops but the unbind
    on its line: still a loop unrolled to the example's rows, and the list it builds has a baked len()."""
    cls, example = T.ROW_TRAPS[name]
    path = trace_to(tmp_path / f"{name}.pt", cls, example)
    found = {(f.kind, f.line): f for f in lint_session(Session(path)).findings}
    loop = found.get(("unrolled-loop", line_of_text(cls.LINE)))
    assert loop is not None, list(found)
    assert loop.frozen == "unrolled 3 times" and loop.confidence == "high"
    assert loop.nodes or name == "RowPairs"  # there the trace dropped even the unbind
    assert "iterates over the rows of" in loop.evidence
    length = found.get(("baked-shape", line_of_text(cls.LEN)))
    assert length is not None, list(found)
    assert length.frozen.endswith("= 3 became a constant") and length.confidence == "high"
    assert "Python list" in length.evidence


def test_a_list_grown_under_a_test_on_data_has_a_baked_len(tmp_path):
    path = trace_to(tmp_path / "heads.pt", T.HeadsAbove, (torch.ones(2, 4),))
    found = {(f.kind, f.line): f for f in lint_session(Session(path)).findings}
    length = found.get(("baked-shape", line_of_text(T.HeadsAbove.LEN)))
    assert length is not None and length.frozen == "len(keep) = 2 became a constant", list(found)
    # the loop over the module list is the architecture, not a finding
    assert not any(kind == "unrolled-loop" for kind, _ in found)


def test_a_branch_whose_sides_make_no_ops_does_not_claim_a_side(tmp_path):
    path = trace_to(tmp_path / "rows.pt", T.RowFilter, (T.BOXES,))
    branch = next(f for f in lint_session(Session(path)).findings if f.text == "if b[4] > 0.5:")
    assert branch.frozen.startswith("which side ran is not in the graph"), branch.frozen


@pytest.mark.parametrize("trap", ["frozen-branch", "nonzero-count", "unrolled-loop", "RowFilter"])
def test_a_finding_has_one_confidence_in_lint_lint_eager_and_the_ui(tmp_path, capsys, trap):
    import asyncio

    from tsdebug.app import TsdebugApp
    from tsdebug.cli import build_open_parser

    cls, example = T.TRAPS[trap] if trap in T.TRAPS else T.ROW_TRAPS[trap]
    path = trace_to(tmp_path / "m.pt", cls, example)
    eager = os.path.join(HERE, "trap_models.py") + ":" + cls.__name__
    spec = spec_of(example[0]) + (":0.6..1" if trap == "RowFilter" else "")  # some rows kept
    assert main(["lint", path, "--json"]) == 1
    plain = {(f["kind"], f["line"]): f["confidence"] for f in json.loads(capsys.readouterr().out)["findings"]}
    main(["lint", path, "--eager", eager, "--input", spec, "--json"])
    with_eager = {(f["kind"], f["line"]): f for f in json.loads(capsys.readouterr().out)["findings"]}
    assert any("confirmed" in f["evidence"] for f in with_eager.values())
    assert {k: f["confidence"] for k, f in with_eager.items() if k in plain} == plain

    async def ui() -> dict:
        app = TsdebugApp(build_open_parser().parse_args([path, "--eager", eager, "--input", spec]))
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(200):
                await pilot.pause()
                if app.state not in ("running", "loading"):
                    break
                await asyncio.sleep(0.01)
            await pilot.press("L")
            await pilot.pause()
            return {(f.kind, f.line): f.confidence for f in app._lint.findings}

    assert asyncio.run(ui()) == plain
