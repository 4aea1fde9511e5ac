"""Build and package checks: setup.py, ignored build products, the package surface, utils."""

from __future__ import annotations

import ast
import re
import runpy
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

import limpyd
from limpyd import exceptions, utils
from limpyd.utils import NotProvided, cached_property, normalize, unique_key

ROOT = Path(__file__).resolve().parent.parent
ENV_VARS = ("LIMPYD_NO_EXTENSIONS", "LIMPYD_REQUIRE_EXTENSIONS")


def _load_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - depends on the interpreter
        tomllib = pytest.importorskip("tomli")
    with path.open("rb") as handle:
        return tomllib.load(handle)


# ---------------------------------------------------------------------- setup.py


def run_setup(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict:
    """Run setup.py with ``env`` (the two LIMPYD_* vars unset otherwise); return setup()'s kwargs."""
    import setuptools

    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    captured: dict = {}

    def fake_setup(**kwargs: Any) -> None:
        assert not captured, "setup() called twice"
        captured.update(kwargs)

    monkeypatch.setattr(setuptools, "setup", fake_setup)
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    assert captured, "setup.py did not call setup()"
    return captured


def _pyx_modules() -> dict:
    """Return ``{module name: source path}`` for every ``.pyx`` file of the package."""
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts): path.relative_to(ROOT).as_posix()
        for path in sorted((ROOT / "limpyd").rglob("*.pyx"))
    }


def test_there_is_a_compiled_module() -> None:
    assert _pyx_modules() == {"limpyd._speedups": "limpyd/_speedups.pyx"}


def test_setup_lists_every_compiled_module(monkeypatch: pytest.MonkeyPatch) -> None:
    from Cython.Build import build_ext

    kwargs = run_setup(monkeypatch)
    assert set(kwargs) == {"ext_modules", "cmdclass"}  # all metadata lives in pyproject.toml
    assert {ext.name: ext.sources for ext in kwargs["ext_modules"]} == {
        name: [source] for name, source in _pyx_modules().items()
    }
    assert all(ext.optional for ext in kwargs["ext_modules"])  # no compiler: warn, stay pure Python
    assert list(kwargs["cmdclass"]) == ["build_ext"]
    assert issubclass(kwargs["cmdclass"]["build_ext"], build_ext)  # Cython's build_ext keeps ``optional``


@pytest.mark.parametrize("value", ["1", "yes"])
def test_setup_require_makes_failures_fatal(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    kwargs = run_setup(monkeypatch, LIMPYD_REQUIRE_EXTENSIONS=value)
    assert [ext.name for ext in kwargs["ext_modules"]] == list(_pyx_modules())
    assert not any(ext.optional for ext in kwargs["ext_modules"])


@pytest.mark.parametrize("value", ["1", "yes", " 1"])
def test_setup_no_extensions_builds_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, value: str
) -> None:
    kwargs = run_setup(monkeypatch, LIMPYD_NO_EXTENSIONS=value)
    assert kwargs == {"ext_modules": [], "cmdclass": {}}
    assert_one_skip_line(capsys, "LIMPYD_NO_EXTENSIONS is set")


def assert_one_skip_line(capsys: pytest.CaptureFixture, reason: str) -> None:
    """Assert setup.py printed exactly one stderr line, naming ``reason``, and nothing on stdout."""
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("limpyd: limpyd._speedups not built (")
    assert reason in lines[0] and lines[0].endswith("the pure-Python twin will be used")


def test_setup_building_prints_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run_setup(monkeypatch)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("optional", [True, False])
def test_setup_failed_compile_says_why_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, optional: bool
) -> None:
    from Cython.Build import build_ext
    from setuptools import Distribution
    from setuptools.errors import CompileError

    kwargs = run_setup(monkeypatch)
    command = kwargs["cmdclass"]["build_ext"](Distribution())
    extension = kwargs["ext_modules"][0]
    extension.optional = optional

    def failing_build(self: Any, ext: Any) -> None:
        raise CompileError("command 'cc' failed: No such file or directory")

    monkeypatch.setattr(build_ext, "build_extension", failing_build)
    if optional:
        command.build_extension(extension)
        assert_one_skip_line(capsys, "the build failed: command 'cc' failed: No such file or directory")
    else:  # LIMPYD_REQUIRE_EXTENSIONS: the failure is fatal
        with pytest.raises(CompileError):
            command.build_extension(extension)
        assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("value", ["0", "", " ", " 0 "])
def test_setup_unset_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    kwargs = run_setup(monkeypatch, LIMPYD_NO_EXTENSIONS=value, LIMPYD_REQUIRE_EXTENSIONS=value)
    assert [(ext.name, ext.optional) for ext in kwargs["ext_modules"]] == [("limpyd._speedups", True)]


def test_setup_refuses_both_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError) as info:
        run_setup(monkeypatch, LIMPYD_NO_EXTENSIONS="1", LIMPYD_REQUIRE_EXTENSIONS="1")
    assert "LIMPYD_NO_EXTENSIONS" in str(info.value)
    assert "LIMPYD_REQUIRE_EXTENSIONS" in str(info.value)


def test_setup_without_cython(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "Cython.Build", None)  # makes the import fail
    assert run_setup(monkeypatch) == {"ext_modules": [], "cmdclass": {}}
    assert_one_skip_line(capsys, "Cython is not installed")
    with pytest.raises(RuntimeError) as info:
        run_setup(monkeypatch, LIMPYD_REQUIRE_EXTENSIONS="1")
    assert "LIMPYD_REQUIRE_EXTENSIONS" in str(info.value)
    assert "Cython is not installed" in str(info.value)


def test_setup_on_another_interpreter(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import platform

    monkeypatch.setattr(platform, "python_implementation", lambda: "PyPy")
    assert run_setup(monkeypatch) == {"ext_modules": [], "cmdclass": {}}
    assert_one_skip_line(capsys, "the interpreter is PyPy, not CPython")
    with pytest.raises(RuntimeError) as info:
        run_setup(monkeypatch, LIMPYD_REQUIRE_EXTENSIONS="1")
    assert "PyPy" in str(info.value) and "CPython" in str(info.value)


def test_setup_is_small_and_never_cythonizes_at_module_level() -> None:
    source = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert len(source.splitlines()) < 60
    called = {
        node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
    }
    assert "cythonize" not in called  # a module-level cythonize() drops ``optional``
    assert "Extension" in called and "setup" in called


def test_pyproject_build_settings() -> None:
    pyproject = _load_toml(ROOT / "pyproject.toml")
    assert pyproject["build-system"] == {
        # setuptools 77 reads the SPDX ``license``; Cython 4 may break the .pyx: bounded
        "requires": ["setuptools>=77", "Cython>=3.0,<4; platform_python_implementation == 'CPython'"],
        "build-backend": "setuptools.build_meta",
    }
    assert pyproject["project"]["name"] == "redis-limpyd"
    # one source for the version: limpyd/__init__.py
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "limpyd.__version__"}
    excluded = pyproject["tool"]["setuptools"]["exclude-package-data"]["limpyd"]
    assert "*.pyx" in excluded and "*.c" in excluded  # wheels carry neither
    pytest_options = pyproject["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in pytest_options["addopts"].split()
    assert pytest_options["filterwarnings"] == ["error"]
    assert pytest_options["xfail_strict"] is True
    assert sorted(marker.split(":")[0] for marker in pytest_options["markers"]) == [
        "cluster",
        "cython",
        "redis",
        "single_server",
        "slow",
    ]


def test_version_is_a_literal_setuptools_reads_without_importing() -> None:
    """``attr = "limpyd.__version__"`` is read statically when it is a plain string literal."""
    tree = ast.parse((ROOT / "limpyd" / "__init__.py").read_text(encoding="utf-8"))
    literals = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(target, "id", None) for target in node.targets] == ["__version__"]
        and isinstance(node.value, ast.Constant)
    ]
    assert literals == [limpyd.__version__]


def test_python_versions_claimed() -> None:
    project = _load_toml(ROOT / "pyproject.toml")["project"]
    assert project["requires-python"] == ">=3.10"  # 3.9 is past its end of life (October 2025)
    claimed = sorted(
        tuple(int(part) for part in classifier.rsplit(" ", 1)[1].split("."))
        for classifier in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", classifier)
    )
    assert claimed == [(3, 10), (3, 11), (3, 12), (3, 13)]  # the versions .ci/run tests
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "3.10" in run and "3.13" in run


def test_ci_first_leg_is_the_readme_test_command() -> None:
    # the README's test command is exactly what CI runs first, with the full suite
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = "scripts/bootstrap && .venv/bin/python -m pytest"
    assert "\n%s\n" % command in readme
    test_lines = [
        line for line in run.splitlines() if "-m pytest" in line and not line.lstrip().startswith("#")
    ]
    assert test_lines[0] == command
    # the middle legs deselect the slow modules and the cluster variants, the others run them
    assert 'run_quick() { LIMPYD_TEST_CLUSTER=0 "$@" -q -p no:cacheprovider -m "not slow"; }' in run
    for module in ("test_faults.py", "test_crash.py", "test_thread_consistency.py"):
        assert "pytestmark = pytest.mark.slow" in (ROOT / "tests" / module).read_text(encoding="utf-8"), (
            module
        )


def test_license() -> None:
    project = _load_toml(ROOT / "pyproject.toml")["project"]
    assert project["license"] == "BSD-3-Clause"
    assert project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("BSD 3-Clause License\n")
    assert not any(classifier.startswith("License ::") for classifier in project["classifiers"])


def test_hiredis_is_the_default_where_it_has_wheels_and_an_extra_elsewhere() -> None:
    from packaging.requirements import Requirement

    project = _load_toml(ROOT / "pyproject.toml")["project"]
    requirements = {Requirement(text).name: Requirement(text) for text in project["dependencies"]}
    assert sorted(requirements) == ["hiredis", "redis"]
    assert str(requirements["redis"].specifier) == ">=4"
    marker = requirements["hiredis"].marker
    base = {"platform_python_implementation": "CPython"}
    for machine in ("x86_64", "AMD64", "aarch64", "arm64"):
        assert marker.evaluate({**base, "platform_machine": machine}), machine
    for machine in ("riscv64", "armv7l", "s390x"):
        assert not marker.evaluate({**base, "platform_machine": machine}), machine
    assert not marker.evaluate({"platform_python_implementation": "PyPy", "platform_machine": "x86_64"})
    assert project["optional-dependencies"]["hiredis"] == ["hiredis>=1"]


def test_limpyd_never_imports_hiredis() -> None:
    """redis-py picks hiredis when it is installed and its own parser otherwise: limpyd needs neither."""
    sources = [path.read_text(encoding="utf-8") for path in (ROOT / "limpyd").rglob("*.py*")]
    assert sources and not any(re.search(r"^\s*(import|from) hiredis", text, re.M) for text in sources)


def test_every_private_module_is_imported() -> None:
    """A private module (``limpyd/_x.py``) that no other module imports is dead code."""
    package = ROOT / "limpyd"
    files = [*package.rglob("*.py"), package / "_speedups.pyx"]
    for path in package.rglob("_*.py"):
        if path.name in ("__init__.py", "__main__.py"):  # the package, and `python -m limpyd`
            continue
        others = "\n".join(other.read_text(encoding="utf-8") for other in files if other != path)
        assert re.search(r"^\s*(from|import) .*\b%s\b" % re.escape(path.stem), others, re.M), path.name


def test_sdist_carries_the_pyx() -> None:
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines()
    assert "include limpyd/_speedups.pyx" in manifest


def test_pyx_header_directives() -> None:
    first_line = (ROOT / "limpyd" / "_speedups.pyx").read_text(encoding="utf-8").splitlines()[0]
    assert first_line == "# cython: language_level=3, embedsignature=True"


# ---------------------------------------------------------------------- git-ignored build products


@pytest.fixture(scope="module")
def git() -> Iterator[Any]:
    """Yield a function running git in the checkout (skip outside a git checkout)."""
    binary = shutil.which("git")
    if binary is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([binary, "-C", str(ROOT), *args], capture_output=True, text=True, check=False)

    yield run


GENERATED = [
    "limpyd/_speedups.c",
    "limpyd/_speedups" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"),
    "limpyd/_speedups.abi3.so",
    "limpyd/_speedups.pyd",
    "limpyd/_speedups.html",
    "build/lib/limpyd/_speedups.c",
    "dist/redis_limpyd-3.0.0.tar.gz",
]
KEPT = ["limpyd/_speedups.pyx", "limpyd/_speedups_py.py", "limpyd/speedups.py", "setup.py", "MANIFEST.in"]


@pytest.mark.parametrize("path", GENERATED)
def test_generated_files_are_ignored(git: Any, path: str) -> None:
    assert git("check-ignore", "--no-index", "-q", path).returncode == 0, "%s is not git-ignored" % path
    assert git("ls-files", "--", path).stdout == "", "%s is committed" % path


@pytest.mark.parametrize("path", KEPT)
def test_sources_are_not_ignored(git: Any, path: str) -> None:
    assert git("check-ignore", "--no-index", "-q", path).returncode == 1, "%s is git-ignored" % path


def test_no_generated_file_is_committed(git: Any) -> None:
    tracked = git("ls-files").stdout.splitlines()
    assert tracked, "git ls-files listed nothing"
    assert [path for path in tracked if path.endswith((".c", ".so", ".pyd", ".html"))] == []


# ---------------------------------------------------------------------- package surface


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        check=False,
    )


def test_import_limpyd_imports_neither_redis_nor_submodules() -> None:
    result = _run_python(
        "import sys, limpyd\n"
        "loaded = sorted(m for m in sys.modules if m == 'redis' or m.startswith(('redis.', 'limpyd.')))\n"
        "print(loaded)\n"
        "assert limpyd.__file__.startswith(%r), limpyd.__file__\n" % str(ROOT)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_submodules_import_on_demand() -> None:
    result = _run_python(
        "import sys\n"
        "from limpyd import model, fields\n"
        "assert 'limpyd.model' in sys.modules and 'limpyd.fields' in sys.modules\n"
        "assert 'redis' in sys.modules\n"
        "print('ok')\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_version() -> None:
    assert limpyd.EXACT_VERSION == "3.0.0"
    assert limpyd.VERSION == (3, 0, 0)
    assert all(type(part) is int for part in limpyd.VERSION)
    assert limpyd.__version__ == limpyd.EXACT_VERSION


def test_version_matches_installed_metadata() -> None:
    from importlib import metadata

    try:
        installed = metadata.version("redis-limpyd")
    except metadata.PackageNotFoundError:
        pytest.skip("redis-limpyd is not installed (running from a bare checkout)")
    assert installed == limpyd.EXACT_VERSION


EXCEPTION_NAMES = ["LimpydException", "UniquenessError", "ImplementationError", "DoesNotExist"]


def test_exceptions_all() -> None:
    assert exceptions.__all__ == EXCEPTION_NAMES


def test_exceptions_star_import() -> None:
    namespace: dict = {}
    exec("from limpyd.exceptions import *", namespace)
    del namespace["__builtins__"]
    assert sorted(namespace) == sorted(EXCEPTION_NAMES)
    for name in EXCEPTION_NAMES:
        assert namespace[name] is getattr(exceptions, name)


def test_exceptions_hierarchy_and_nothing_else() -> None:
    assert exceptions.LimpydException.__bases__ == (Exception,)
    for name in ("UniquenessError", "ImplementationError", "DoesNotExist"):
        assert getattr(exceptions, name).__bases__ == (exceptions.LimpydException,)
    defined = sorted(
        name
        for name, value in vars(exceptions).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    )
    assert defined == sorted(EXCEPTION_NAMES + ["BulkError"])  # BulkError: new in 3.x, not star-exported
    assert exceptions.BulkError.__bases__ == (exceptions.LimpydException,)


# ---------------------------------------------------------------------- limpyd.utils


def test_utils_all() -> None:
    assert sorted(utils.__all__) == sorted(
        ["make_key", "unique_key", "normalize", "cached_property", "NotProvided"]
    )
    assert utils.make_key("a", 1, "clé") == "a:1:clé"


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"abc", "abc"),
        ("clé".encode(), "clé"),
        ("🚲".encode(), "🚲"),
        ("abc", "abc"),
        ("", ""),
        (b"", ""),  # stored as '': indexed under '' too
        (None, None),
        (0, 0),
        (1, 1),
        (1.5, 1.5),
        ([b"a"], [b"a"]),
    ],
)
def test_normalize(value: Any, expected: Any) -> None:
    result = normalize(value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("value", [bytearray(b"x"), None, 0, False, [b"a"], "é"], ids=repr)
def test_normalize_returns_other_values_as_is(value: Any) -> None:
    assert normalize(value) is value


def test_normalize_rejects_invalid_utf8() -> None:
    with pytest.raises(UnicodeDecodeError):
        normalize(b"\xff")


def test_cached_property() -> None:
    calls = []

    class Thing:
        @cached_property
        def value(self) -> int:
            """The value, computed once."""
            calls.append(self)
            return len(calls) * 10

    assert isinstance(Thing.value, cached_property)  # class access: the descriptor itself
    assert Thing.value.__doc__ == "The value, computed once."
    assert not hasattr(cached_property, "__set__")  # non-data: the instance dict wins
    first, second = Thing(), Thing()
    assert first.value == 10 and first.value == 10
    assert calls == [first]
    assert first.__dict__["value"] == 10
    assert second.value == 20
    assert calls == [first, second]
    first.value = 5
    assert first.value == 5 and len(calls) == 2


def test_cached_property_with_name() -> None:
    def compute(instance: Any) -> str:
        return "computed"

    class Thing:
        value = cached_property(compute, name="value")
        other = cached_property(compute, name="stored")

    thing = Thing()
    assert thing.value == "computed" and thing.__dict__["value"] == "computed"
    assert thing.other == "computed" and thing.__dict__["stored"] == "computed"
    assert "other" not in thing.__dict__


def test_not_provided() -> None:
    assert isinstance(NotProvided, type)
    assert NotProvided is utils.NotProvided
    assert NotProvided is not None and bool(NotProvided)


class RecordingConnection:
    """Answer EXISTS from a set of existing keys, recording each call."""

    def __init__(self, existing: set) -> None:
        self.existing = existing
        self.calls: list = []

    def exists(self, *keys: str) -> int:
        self.calls.append(keys)
        return sum(key in self.existing for key in keys)


@pytest.fixture
def fixed_uuids(monkeypatch: pytest.MonkeyPatch) -> list:
    """Make ``uuid.uuid4`` (as seen by limpyd.utils) return the listed UUIDs, in order."""
    values = [uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)]
    queue = list(values)
    monkeypatch.setattr(utils.uuid, "uuid4", lambda: queue.pop(0))
    return [value.hex for value in values]


@pytest.mark.parametrize("prefix, expected", [(None, "{}"), ("", "{}"), ("pre", "pre:{}"), ("a:b", "a:b:{}")])
def test_unique_key_one_exists_per_try(fixed_uuids: list, prefix: Any, expected: str) -> None:
    first, second, _ = fixed_uuids
    connection = RecordingConnection({expected.format(first)})
    assert unique_key(connection, prefix) == expected.format(second)
    assert connection.calls == [(expected.format(first),), (expected.format(second),)]


@pytest.mark.redis
def test_unique_key_on_redis(database: Any, count_commands: Any) -> None:
    with count_commands(1):
        key = unique_key(database.connection)
    assert type(key) is str
    assert re.fullmatch("[0-9a-f]{32}", key)
    with count_commands(1):
        prefixed = unique_key(database.connection, prefix="ns:tmp")
    assert re.fullmatch("ns:tmp:[0-9a-f]{32}", prefixed)
    assert prefixed != "ns:tmp:" + key


@pytest.mark.redis
def test_unique_key_skips_existing_keys_on_redis(
    database: Any, count_commands: Any, fixed_uuids: list
) -> None:
    first, second, third = fixed_uuids
    database.connection.set("p:" + first, "taken")
    database.connection.set("p:" + second, "taken")
    with count_commands(3):
        assert unique_key(database.connection, "p") == "p:" + third
    with count_commands(1):
        assert database.connection.exists("p:" + third) == 0
