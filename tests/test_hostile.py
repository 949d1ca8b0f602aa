"""Hostile and broken inputs met the way a user meets them: real files, symlinks, hard links and FIFOs
made here, real modules saved with torch.jit.save.  Each is one line on stderr, exit 2, and nothing the
user gave us changes."""

import hashlib
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile

import pytest
import torch

from tsdebug.cli import main


class Lin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.l(x)


EAGER_LIN = textwrap.dedent(
    """
    import torch
    class Lin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Linear(4, 4)
        def forward(self, x):
            return self.l(x)
    """
)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def one_line(code, err, *needles):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def lin(tmp_path):
    path = tmp_path / "lin.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Lin().eval()), str(path))
    return path


@pytest.fixture
def eager_py(tmp_path):
    path = tmp_path / "eager_lin.py"
    path.write_text(EAGER_LIN)
    return path


def subprocess_cli(*argv, timeout=60, **kw):
    return subprocess.run([sys.executable, "-m", "tsdebug.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, **kw)


# ------------------------------------------------------------- outputs onto what we read

def test_save_outputs_through_a_symlink_to_the_model(lin, tmp_path, capsys):
    link = tmp_path / "link.pt"
    link.symlink_to(lin)
    before = digest(lin)
    code, _, err = cli(capsys, "run", lin, "--save-outputs", link)
    one_line(code, err, "--save-outputs", "tsdebug reads")
    assert digest(lin) == before and link.is_symlink()


def test_save_outputs_onto_the_inputs_file(lin, tmp_path, capsys):
    inputs = tmp_path / "inp.pt"
    torch.save((torch.randn(2, 4),), inputs)
    before = digest(inputs)
    code, _, err = cli(capsys, "run", lin, "--inputs", inputs, "--save-outputs", inputs)
    one_line(code, err, "--save-outputs", "tsdebug reads")
    assert digest(inputs) == before


def test_render_onto_the_eager_source(lin, eager_py, capsys):
    before = digest(eager_py)
    code, _, err = cli(capsys, "render", lin, "--eager", f"{eager_py}:Lin", "-o", eager_py, "--format", "dot")
    one_line(code, err, "-o", "tsdebug reads")
    assert digest(eager_py) == before


def test_save_outputs_onto_a_hard_link_of_the_eager_weights(lin, tmp_path, capsys):
    """Own case: a hard link is the same file under another name (realpath differs, the inode does not)."""
    weights = tmp_path / "w.pt"
    torch.save(Lin().state_dict(), weights)
    other = tmp_path / "other_name.pt"
    os.link(weights, other)
    before = digest(weights)
    code, _, err = cli(capsys, "diff", lin, "--eager", "test_hostile:Lin", "--eager-weights", weights,
                       "--input", "float32[2,4]")
    assert code in (0, 1), err
    code, _, err = cli(capsys, "render", lin, "--eager", "test_hostile:Lin", "--eager-weights", weights,
                       "-o", other, "--format", "dot")
    one_line(code, err, "tsdebug reads")
    assert digest(weights) == before


def test_export_through_a_symlink_to_the_model(lin, tmp_path, capsys):
    link = tmp_path / "out.pt2"
    link.symlink_to(lin)
    before = digest(lin)
    code, _, err = cli(capsys, "export", lin, "-o", link, "--input", "float32[2,4]")
    one_line(code, err, "-o", "tsdebug reads")
    assert digest(lin) == before


def test_save_outputs_into_a_missing_folder(lin, tmp_path, capsys):
    code, _, err = cli(capsys, "run", lin, "--save-outputs", tmp_path / "nope" / "out.pt")
    one_line(code, err, "does not exist")


def test_save_outputs_on_a_full_disk_leaves_the_old_file_whole(lin, tmp_path):
    """A write cut short (the file-size limit stands in for a full disk): one line, the old outputs
    untouched, no temporary file left."""
    out = tmp_path / "out.pt"
    out.write_bytes(b"old outputs")
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
        from tsdebug.cli import main
        sys.exit(main(["run", {str(lin)!r}, "--save-outputs", {str(out)!r}]))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    one_line(res.returncode, res.stderr, "--save-outputs", "cannot write")
    assert out.read_bytes() == b"old outputs"
    assert sorted(os.listdir(tmp_path)) == ["lin.pt", "out.pt"]


def test_save_outputs_writes_a_whole_file(lin, tmp_path, capsys):
    out = tmp_path / "out.pt"
    code, _, err = cli(capsys, "run", lin, "--save-outputs", out, "--input", "float32[2,4]")
    assert code == 0, err
    assert torch.load(out).shape == (2, 4)
    assert sorted(os.listdir(tmp_path)) == ["lin.pt", "out.pt"]


# ------------------------------------------------------------------------ hangs

@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.pt"
    os.mkfifo(path)
    return path


def test_fifo_as_the_model(fifo):
    res = subprocess_cli("run", fifo, timeout=60)
    one_line(res.returncode, res.stderr, "FIFO", "not a regular file")


def test_fifo_as_inputs(lin, fifo):
    res = subprocess_cli("run", lin, "--inputs", fifo, timeout=60)
    one_line(res.returncode, res.stderr, "FIFO", "input file")


def test_fifo_as_the_eager_source(lin, tmp_path):
    path = tmp_path / "eager.py"
    os.mkfifo(path)
    res = subprocess_cli("diff", lin, "--eager", f"{path}:Lin", timeout=60)
    one_line(res.returncode, res.stderr, "FIFO")


@pytest.mark.parametrize("what", ["/dev/null", "directory"])
def test_inputs_that_are_not_files(lin, tmp_path, capsys, what):
    """Own cases: a character device and a directory given as --inputs."""
    path = what if what != "directory" else tmp_path
    code, _, err = cli(capsys, "run", lin, "--inputs", path)
    one_line(code, err, "not a regular file")


# --------------------------------------------------------- the input's fault, not ours

@pytest.mark.parametrize("spec,needle", [
    ("float32[100000,100000,100]", "more than this machine's memory"),
    ("float32[2,4]:1.2.3..4", "not two numbers"),
    ("float32[2,4]:e..e", "not two numbers"),
    ("int64[2,4]:0..1e30", "does not fit int64"),
    ("float16[2,4]:0..1e30", "does not fit float16"),
    ("float32[2,4]:5..1", "empty value range"),
])
def test_bad_specs(lin, capsys, spec, needle):
    code, _, err = cli(capsys, "run", lin, "--input", spec)
    one_line(code, err, needle)


@pytest.mark.parametrize("argv,needle", [
    (["--seed", str(1 << 70)], "64 bits"),
    (["--device", "meta"], "meta"),
])
def test_bad_options(lin, capsys, argv, needle):
    code, _, err = cli(capsys, "run", lin, *argv)
    one_line(code, err, needle)


def test_largest_seed_runs(lin, capsys):
    code, _, err = cli(capsys, "run", lin, "--seed", str((1 << 64) - 1), "--input", "float32[2,4]")
    assert code == 0, err


@pytest.mark.parametrize("tol", ["nan", "-1", "inf"])
def test_bad_tolerances(lin, eager_py, capsys, tol):
    code, _, err = cli(capsys, "diff", lin, "--eager", f"{eager_py}:Lin", "--rtol", tol)
    one_line(code, err, "--rtol")


class View(torch.nn.Module):
    def forward(self, x):
        return x[0, 0, :2] * 2


def test_stored_trace_shape_too_large(tmp_path, capsys):
    """Traced on an expanded (stride 0) tensor: the archive stores a shape no machine can allocate."""
    path = tmp_path / "big.pt"
    big = torch.zeros(1).expand(100000, 100000, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(View(), big, check_trace=False), str(path))
    code, _, err = cli(capsys, "run", path)
    one_line(code, err, "the archive stores", "100000,100000,100")


def test_stored_trace_shape_negative(tmp_path, capsys):
    """A traced archive whose stored example shape was edited to -5 (its pickled int patched)."""
    path = tmp_path / "big.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(View(), torch.zeros(1).expand(100000, 3, 4), check_trace=False), str(path))
    bad = tmp_path / "neg.pt"
    hundred_thousand, minus_five = b"J" + (100000).to_bytes(4, "little"), b"J" + (-5).to_bytes(4, "little", signed=True)
    _rewrite(path, bad, lambda name, data: data.replace(hundred_thousand, minus_five, 1)
             if name.endswith("traced_inputs.pkl") else data)
    code, _, err = cli(capsys, "run", bad)
    one_line(code, err, "the archive stores", "negative size")


def _rewrite(src, dst, change, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w", compression) as b:
        for info in a.infolist():
            b.writestr(info.filename, change(info.filename, a.read(info.filename)), compress_type=compression)


def test_corrupt_deflated_code_entry(lin, tmp_path, capsys):
    deflated = tmp_path / "deflated.pt"
    _rewrite(lin, deflated, lambda name, data: data, zipfile.ZIP_DEFLATED)
    code, _, err = cli(capsys, "run", deflated, "--input", "float32[2,4]")
    assert code == 0, err  # re-zipped with deflate is still readable
    data = bytearray(deflated.read_bytes())
    with zipfile.ZipFile(deflated) as z:
        info = next(i for i in z.infolist() if "/code/" in i.filename and i.filename.endswith(".py"))
    off = info.header_offset
    start = off + 30 + int.from_bytes(data[off + 26:off + 28], "little") + int.from_bytes(data[off + 28:off + 30],
                                                                                          "little")
    data[start:start + info.compress_size] = b"\xff" * info.compress_size
    bad = tmp_path / "zlibbad.pt"
    bad.write_bytes(bytes(data))
    code, _, err = cli(capsys, "run", bad, "--input", "float32[2,4]")
    one_line(code, err, "corrupt", "decompress")


def test_corrupt_debug_pkl(lin, tmp_path, capsys):
    bad = tmp_path / "debugbad.pt"
    _rewrite(lin, bad, lambda name, data: b"\x80\x02garbage" + data[10:] if name.endswith(".debug_pkl") else data)
    code, _, err = cli(capsys, "run", bad, "--input", "float32[2,4]")
    one_line(code, err, "corrupt", "debug_pkl")


def test_zip_whose_code_entry_is_a_symlink(lin, tmp_path, capsys):
    """Own case: a zip entry marked as a symbolic link (what `zip -y` makes of a linked folder)."""
    bad = tmp_path / "linked.pt"
    with zipfile.ZipFile(lin) as a, zipfile.ZipFile(bad, "w") as b:
        for info in a.infolist():
            data = a.read(info.filename)
            if "/code/" in info.filename and info.filename.endswith(".py"):
                info.external_attr = (0o120777 << 16)
            b.writestr(info, data)
    code, _, err = cli(capsys, "run", bad, "--input", "float32[2,4]")
    one_line(code, err, "symbolic link")


class Alloc(torch.nn.Module):
    def forward(self, x, n: int):
        return x + torch.zeros(n, n, n).sum()


def test_allocation_failure_in_the_model_is_its_error_at_its_node(tmp_path, capsys):
    path = tmp_path / "alloc.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Alloc()), str(path))
    code, _, err = cli(capsys, "run", path, "--input", "float32[2]", "--input", "int:100000")
    one_line(code, err, "aten::zeros", "test_hostile.py", "allocate")


def test_render_run_fails_when_the_model_does(tmp_path, capsys):
    path = tmp_path / "alloc.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Alloc()), str(path))
    code, out, err = cli(capsys, "render", path, "--run", "--input", "float32[2]", "--input", "int:100000",
                         "-o", tmp_path / "g.dot")
    one_line(code, err, "aten::zeros")
    assert "wrote" in out and (tmp_path / "g.dot").exists()


# ------------------------------------------------------------- the user's code exiting

@pytest.mark.parametrize("where", ["import", "constructor", "forward"])
def test_eager_model_calling_sys_exit(lin, tmp_path, capsys, where):
    body = {
        "import": "import sys\nsys.exit(0)\n" + EAGER_LIN,
        "constructor": EAGER_LIN.replace("self.l = torch.nn.Linear(4, 4)",
                                         "self.l = torch.nn.Linear(4, 4)\n        import sys; sys.exit(0)"),
        "forward": EAGER_LIN.replace("return self.l(x)", "import sys; sys.exit(0)"),
    }[where]
    path = tmp_path / f"exits_{where}.py"
    path.write_text(body)
    code, _, err = cli(capsys, "diff", lin, "--eager", f"{path}:Lin", "--input", "float32[2,4]")
    one_line(code, err, "sys.exit(0)", str(path))


# ---------------------------------------------------------------------- deep programs

DEPTH = 600


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """Modules nesting 600 calls deep, scripted (torch needs the recursion room to script them too)."""
    folder = tmp_path_factory.mktemp("deep")
    src = ["import torch", "class L0(torch.nn.Module):", "    def forward(self, x):", "        return x + 1"]
    for i in range(1, DEPTH):
        src += [f"class L{i}(torch.nn.Module):", "    def __init__(self):", "        super().__init__()",
                f"        self.inner = L{i - 1}()", "    def forward(self, x):", "        return self.inner(x) + 1"]
    (folder / "deepmods.py").write_text("\n".join(src) + "\n")
    maker = textwrap.dedent(
        f"""
        import sys, torch, warnings
        warnings.simplefilter("ignore")
        sys.setrecursionlimit(100000)
        sys.path.insert(0, {str(folder)!r})
        import deepmods
        torch.jit.save(torch.jit.script(deepmods.L{DEPTH - 1}()), {str(folder / "deep.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", maker], check=True, timeout=300)
    return folder / "deep.pt"


# Loading a 600-deep archive takes torch itself ~10 s and inlining it ~25 s (its own C++, superlinear
# in the depth): the engine run and render use the call tree, lint reads the inlined graph.

def test_deep_program_runs_in_the_engine(deep):
    from engine import Session

    s = Session(str(deep))
    s.start(specs=["float32[2]"])
    s.machine.run()
    assert s.machine.error is None
    assert torch.equal(s.machine.outputs, s.inputs[0] + DEPTH)
    assert len(s.machine.timeline) >= 2 * DEPTH


def test_deep_program_lint_and_render(deep, tmp_path, capsys):
    code, out, err = cli(capsys, "lint", deep)
    assert code == 0 and "findings   none" in out, err
    code, out, err = cli(capsys, "render", deep, "--call-tree", "-o", tmp_path / "deep.dot")
    assert code == 0 and "wrote" in out, err


# ------------------------------------------------------------- imports chosen by the archive

def test_op_namespace_does_not_choose_what_is_imported(tmp_path):
    """An archive whose operator lives in namespace ``this``: tsdebug must not `import this` (which
    prints the Zen of Python); it names the operator and says to pass --import."""
    pkg = tmp_path / "pkgs" / "regthis"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(
        """
        import torch
        lib = torch.library.Library("this", "DEF")
        lib.define("twice(Tensor x) -> Tensor")
        lib.impl("twice", lambda x: x * 2, "CompositeExplicitAutograd")
        """))
    maker = textwrap.dedent(
        f"""
        import sys, torch, warnings
        warnings.simplefilter("ignore")
        sys.path.insert(0, {str(tmp_path / "pkgs")!r})
        import regthis
        class M(torch.nn.Module):
            def forward(self, x):
                return torch.ops.this.twice(x)
        torch.jit.save(torch.jit.script(M()), {str(tmp_path / "this.pt")!r})
        """)
    (tmp_path / "make.py").write_text(maker)
    subprocess.run([sys.executable, str(tmp_path / "make.py")], check=True, timeout=120)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "pkgs") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess_cli("run", tmp_path / "this.pt", "--input", "float32[3]", env=env, cwd=str(tmp_path))
    assert "Zen of Python" not in res.stdout + res.stderr
    one_line(res.returncode, res.stderr, "this::twice", "--import")
    res = subprocess_cli("run", tmp_path / "this.pt", "--input", "float32[3]", "--import", "regthis", env=env,
                         cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "Zen of Python" not in res.stdout + res.stderr


# ------------------------------------------------------------------ the debugger without a terminal

@pytest.mark.parametrize("command", [["MODEL"], ["demo"]])
def test_debugger_without_a_terminal_says_so(lin, command):
    argv = [str(lin) if c == "MODEL" else c for c in command]
    env = {k: v for k, v in os.environ.items() if k != "TEXTUAL_DRIVER"}
    res = subprocess.run([sys.executable, "-m", "tsdebug.cli", *argv], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=60, env=env)
    one_line(res.returncode, res.stderr, "needs a terminal")


# ------------------------------------------------------------------ the UI on an input too large

def _notices(app):
    return [str(n.message) for n in app._notifications]


def test_ui_input_too_large_on_the_command_line_and_with_i(lin):
    import asyncio

    from tsdebug.app import TsdebugApp
    from tsdebug.cli import build_open_parser

    async def settle(pilot, app):
        for _ in range(300):
            await pilot.pause()
            if app.state not in ("running", "loading"):
                break
            await asyncio.sleep(0.01)
        await pilot.pause()

    async def run():
        app = TsdebugApp(build_open_parser().parse_args([str(lin), "--input", "float32[100000,100000,100]"]))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            assert app.is_running and app.load_error and "more than this machine's memory" in app.load_error
            await pilot.press("i")
            await pilot.pause()
            app.screen.query_one("#prompt-input").value = "float32[2,4]"
            await pilot.press("enter")
            await settle(pilot, app)
            assert app.session.inputs[0].shape == (2, 4)
            await pilot.press("i")
            await pilot.pause()
            app.screen.query_one("#prompt-input").value = "float32[100000,100000,100]"
            await pilot.press("enter")
            await settle(pilot, app)
            assert app.is_running and app.session.inputs[0].shape == (2, 4)
            assert any("more than this machine's memory" in n for n in _notices(app)), _notices(app)

    asyncio.run(run())


# ------------------------------------------------------ lint: source FIFOs, the counterexample file

BRANCHY = textwrap.dedent(
    """
    import torch
    class Branchy(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x - 1
    """
)


def _traced_branchy(tmp_path):
    src = tmp_path / "branchy.py"
    src.write_text(BRANCHY)
    maker = textwrap.dedent(
        f"""
        import sys, torch, warnings
        warnings.simplefilter("ignore")
        sys.path.insert(0, {str(tmp_path)!r})
        from branchy import Branchy
        torch.jit.save(torch.jit.trace(Branchy(), torch.ones(2, 3)), {str(tmp_path / "branchy.pt")!r})
        """)
    subprocess.run([sys.executable, "-c", maker], check=True, timeout=120)
    return src, tmp_path / "branchy.pt"


def test_lint_with_a_fifo_where_the_source_was(tmp_path):
    src, model = _traced_branchy(tmp_path)
    src.unlink()
    os.mkfifo(src)
    res = subprocess_cli("lint", model, timeout=90)
    assert res.returncode in (0, 1), res.stderr
    assert "Traceback" not in res.stderr


def test_lint_eager_counterexample_beside_the_model_not_through_a_planted_link(tmp_path):
    import tempfile

    src, model = _traced_branchy(tmp_path)
    shared = os.path.join(tempfile.gettempdir(), "tsdebug")
    os.makedirs(shared, exist_ok=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    planted = os.path.join(shared, "branchy-counterexample.pt")
    if os.path.lexists(planted):
        os.unlink(planted)
    os.symlink(victim, planted)
    try:
        res = subprocess_cli("lint", model, "--eager", f"{src}:Branchy", "--input", "float32[2,3]", timeout=180)
        assert res.returncode == 1, res.stderr
        assert victim.read_text() == "keep me"
        saved = tmp_path / "branchy-counterexample.pt"
        assert saved.exists() and str(saved) in res.stdout, res.stdout
        assert isinstance(torch.load(saved), tuple)
    finally:
        os.unlink(planted)


def test_demo_first_runs_at_once(tmp_path):
    """Four first-time demos building the archive at once: every one gets a whole archive."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-m", "tsdebug.cli", "demo", "--print-path"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert code == 0, err
    path = results[0][1].strip()
    torch.jit.load(path)
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]


def test_deeper_than_the_bound_is_one_line(deep, capsys, monkeypatch):
    """Past tsdebug's depth bound (lowered here to stay fast): said in one line, not a RecursionError."""
    from engine.formats.torchscript import archive

    monkeypatch.setattr(archive, "MAX_DEPTH", 100)
    code, _, err = cli(capsys, "lint", deep)
    one_line(code, err, "more than 100 deep")
