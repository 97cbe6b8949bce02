"""The repository keeps its promises: README commands, CI script and paper→code map stay true; the paper
wing never imports the toy wing, and the package has no import cycle."""
import ast
import importlib
import re
import shlex

from conftest import ROOT

README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def setup_commands() -> list[str]:
    """The fenced ```bash blocks of the README's set-up section."""
    section = README.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_has_exactly_two_setup_commands_that_install_first():
    commands = setup_commands()
    assert len(commands) == 2, commands
    for command in commands:
        assert "\n" not in command, "each set-up command is one line"
        assert command.startswith('pip install "torch==2.13.0+cpu" && pip install -r requirements.txt && ')


def test_ci_runs_the_readmes_test_command():
    test_command = setup_commands()[1].rsplit("&& ", 1)[1]
    assert test_command == "python -m pytest -q"
    assert f"\n{test_command} ||" in CI
    assert 'pip install --quiet "torch==2.13.0+cpu"' in CI
    assert "requirements.txt" in CI


def test_main_job_input_ships_with_the_repository():
    main_job = setup_commands()[0].rsplit("&& ", 1)[1]
    clip = main_job.split()[3]
    assert (ROOT / clip).is_file(), clip


def test_paper_to_code_map_points_at_real_functions():
    table = README.split("## Paper → code", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if "nanog4v/" in line]
    assert len(rows) >= 20
    for row in rows:
        module = None
        for span in re.findall(r"`([^`]+)`", row):       # `nanog4v/x.py:name`, then `name`, `name` ...
            if m := re.fullmatch(r"nanog4v/([\w/]+)\.py:([\w.]+)", span):
                module, name = importlib.import_module("nanog4v." + m[1].replace("/", ".")), m[2]
            elif module is not None and re.fullmatch(r"[\w.]+", span):
                name = span
            else:
                continue
            obj = module
            for part in name.split("."):
                assert hasattr(obj, part), f"{module.__name__} has no {name}"
                obj = getattr(obj, part)


def test_main_job_runs_on_the_shipped_checkpoint(tmp_path):
    """The README's main command, as a user runs it (videos sent to tmp_path): the shipped nano model
    answers the toy questions right, shows a video, and refuses the harmful request."""
    import shlex
    import subprocess
    import sys
    main_job = setup_commands()[0].rsplit("&& ", 1)[1]
    argv = shlex.split(main_job)
    assert argv[:2] == ["python", "chat.py"]
    run = subprocess.run([sys.executable, *argv[1:], "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    replies = [line for line in run.stdout.splitlines() if line.startswith("gpt4video> ")]
    assert replies[:2] == ["gpt4video> red", "gpt4video> two"]
    assert "<video>" in replies[2] and len(list(tmp_path.glob("*.mp4"))) == 1
    assert replies[3] == "gpt4video> I'm sorry, but I can't help with that request."
    assert "safety[input-text]: flagged" in run.stderr


def test_the_readme_shows_the_pictures_of_its_main_command():
    """The contact sheets the README shows exist, and examples/readme_pictures.py reads the same command
    the README runs."""
    import importlib.util
    for png in re.findall(r"!\[[^]]*\]\((docs/readme_[a-z0-9]+\.png)\)", README):
        assert (ROOT / png).is_file(), png
    assert "docs/readme_clip.png" in README and "docs/readme_video1.png" in README
    spec = importlib.util.spec_from_file_location("readme_pictures", ROOT / "examples" / "readme_pictures.py")
    pictures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pictures)
    assert pictures.main_command() == shlex.split(setup_commands()[0].rsplit("&& ", 1)[1])


# --- the import graph ------------------------------------------------------------------------------------

def import_graph(package=ROOT / "nanog4v") -> dict[str, set[str]]:
    """{module: the package's modules it imports}, read from the source (imports inside functions count
    too). `from . import x` and `from .x import y` resolve against the importing module's package."""
    graph = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        here = parts[:-1]                                             # the package a relative import starts in
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                target = ".".join(base + (node.module.split(".") if node.module else []))
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}   # `from pkg import module`
        graph[name] = set()
        for target in found:
            while target and target.split(".")[0] == "nanog4v":
                if (ROOT / target.replace(".", "/")).with_suffix(".py").is_file() or (ROOT / target.replace(".", "/")).is_dir():
                    graph[name].add(target)
                    break
                target = target.rpartition(".")[0]                   # `from .x import name`: the module is x
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_import_graph_is_read_right():
    graph = import_graph()
    assert "nanog4v.toy.world" in graph["nanog4v.toy.datasets"]          # from .world import ...
    assert "nanog4v.data" in graph["nanog4v.toy.worlddir"]               # from ..data import SYSTEM
    assert "nanog4v.t2v" in graph["nanog4v.toy.generator"]               # from .. import t2v
    assert "nanog4v.model" in graph["nanog4v.assistant"] and "nanog4v.toy" not in graph["nanog4v.assistant"]
    assert len(graph) >= 35


def test_the_paper_wing_never_imports_the_toy_wing_or_the_evaluation():
    """nanog4v/*.py is the paper's model: the toy world and the evaluation plug into it from outside
    (chat.py, train.py, nanog4v.eval), never the other way round — not even through another module."""
    graph = import_graph()
    paper = [f"nanog4v.{p.stem}" for p in (ROOT / "nanog4v").glob("*.py") if p.stem != "__init__"]
    assert {"nanog4v.model", "nanog4v.safety", "nanog4v.t2v", "nanog4v.assistant"} <= set(paper)
    leaks = {m: sorted(t for t in reachable(graph, m) if t.startswith(("nanog4v.toy", "nanog4v.eval")))
             for m in paper}
    assert not {m: t for m, t in leaks.items() if t}


def test_there_is_no_import_cycle():
    graph = import_graph()
    cycles = [m for m in graph if m in reachable(graph, m)]
    assert not cycles, cycles


def test_paths_the_package_finds_from_its_own_location_are_the_repositorys():
    """Modules that moved into nanog4v/toy/ and nanog4v/eval/ still find train.py and weights/nano."""
    from nanog4v.eval import ablations, tables
    from nanog4v.toy import recipe
    assert recipe.TRAIN_PY == ROOT / "train.py" and recipe.TRAIN_PY.is_file()
    assert tables.DEFAULT_CKPT == ROOT / "weights" / "nano" and (tables.DEFAULT_CKPT / "stage2").is_dir()
    assert ablations.ROOT == ROOT
