"""nox sessions for bitnet-ref; dependencies come from pyproject.toml."""

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
DEV = nox.project.dependency_groups(PYPROJECT, "dev")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite, the quick crossval gate against llama.cpp included."""
    session.install("torch==2.13.0")  # first and pinned: the local CPU wheel; a free torch pulls a multi-GB CUDA one
    session.install(".[hf]", *DEV)
    session.run("pytest", *session.posargs)


@nox.session
def crossval(session: nox.Session) -> None:
    """Cross-validate bitnet_ref against llama.cpp on synthetic models; writes out/crossval and its report."""
    session.install(".")
    session.run("python", "-m", "crossval", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmark bitnet_ref and llama.cpp side by side; writes out/bench and its report."""
    session.install(".")
    session.run("python", "-m", "bench", *session.posargs)


@nox.session
def report(session: nox.Session) -> None:
    """Rebuild every HTML report and out/index.html from the records under out/."""
    session.install(".")
    session.run("python", "-m", "reports", *(session.posargs or ["out"]))


@nox.session
def lint(session: nox.Session) -> None:
    """Run ruff over the project."""
    session.install("ruff")
    session.run("ruff", "check", ".")
