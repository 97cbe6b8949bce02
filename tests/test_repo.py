"""The repository keeps its promises: README commands, CI script and paper→code map stay true."""
import importlib
import re

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
            if m := re.fullmatch(r"nanog4v/(\w+)\.py:([\w.]+)", span):
                module, name = importlib.import_module(f"nanog4v.{m[1]}"), m[2]
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
