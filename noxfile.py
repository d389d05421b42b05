"""nox sessions for bitnet-ref; dependencies come from pyproject.toml."""

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
DEV = nox.project.dependency_groups(PYPROJECT, "dev")


def install(session: nox.Session, *extra: str) -> None:
    """Install the project and the given extra requirements."""
    session.install(".", *extra)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (includes the quick crossval gate)."""
    install(session, *DEV)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Run ruff over the project."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
