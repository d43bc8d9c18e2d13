"""Finding extensions by name or `package.module:function`, and their options.

Tasks, aggregation layers and algorithms are plug-ins of the same kind: a
function found by a registered name (built in, or registered by an installed
package under an entry-point group such as `tffpipe.tasks`) or by a path
`my_pkg.my_module:function`. Its keyword arguments with defaults are its
options, which the launcher turns into `--<name>_<option>` flags.

Options are read from the function's source with `ast`, without importing the
module: plug-in modules import TensorFlow, and flags must be defined (and bad
ones reported) before TensorFlow loads. A module whose source is not
available is imported instead.
"""

import ast
import dataclasses
import importlib
import importlib.util
from importlib import metadata
import inspect
import re
import typing
from typing import Any
from collections.abc import Callable, Mapping

from tffpipe import errors
import contextlib


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered plug-in.

    Attributes:
      name: the value given to its flag (`--task=NAME`).
      path: the function as `module:function`.
      source: `built-in`, or the distribution that registered it.
    """

    name: str
    path: str
    source: str


@dataclasses.dataclass(frozen=True)
class Option:
    """One keyword option of a plug-in function.

    Attributes:
      default: the function's default value.
      help: the option's line from the function's `Args:` docstring section.
      choices: the allowed values when annotated `typing.Literal[...]`.
    """

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


def entries(builtin: Mapping[str, str], group: str) -> dict[str, Entry]:
    """Built-in entries, then those installed packages register under `group`.

    A plug-in cannot shadow a built-in name; it is left out.
    """
    found = {name: Entry(name, path, "built-in") for name, path in builtin.items()}
    for ep in metadata.entry_points(group=group):
        if ep.name not in found:
            source = ep.dist.name if ep.dist is not None else "entry point"
            found[ep.name] = Entry(ep.name, ep.value, source)
    return found


def is_path(name: str) -> bool:
    return ":" in name


def flag_prefix(name: str) -> str:
    """The prefix of a plug-in's option flags: its name, or a path's function name."""
    return name.rpartition(":")[2] if is_path(name) else name


def load(path: str, error: type[Exception], kind: str) -> Callable[..., Any]:
    """Imports `module:function`.

    Raises:
      error: the module does not import (any exception its import raises,
        named in one line), or has no such callable.
    """
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        # A user's module can fail to import in any way (SyntaxError, a
        # missing dependency, an exception at import): all are one line.
        raise error(f"cannot import {kind} module {module_name!r}: {type(e).__name__}: {errors.first_line(e)}") from e
    function = getattr(module, attr, None)
    if not callable(function):
        raise error(f"module {module_name!r} has no callable {attr!r}")
    return function


def options_of(function: Callable[..., Any], reserved: tuple[str, ...] = ()) -> dict[str, Option]:
    """The keyword options of an imported function, by name (see `options`)."""
    docs = arg_docs(inspect.getdoc(function) or "")
    try:
        hints = typing.get_type_hints(function)
    except Exception:
        hints = {}  # unresolvable annotations only lose the choices
    found = {}
    for param in inspect.signature(function).parameters.values():
        if param.default is inspect.Parameter.empty or param.name in reserved:
            continue
        hint = hints.get(param.name)
        choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
        found[param.name] = Option(param.default, docs.get(param.name, param.name), choices or None)
    return found


def options(
    path: str, reserved: tuple[str, ...] = (), error: type[Exception] = ValueError, kind: str = "plug-in"
) -> dict[str, Option]:
    """The keyword options of `module:function`, read without importing it if possible.

    Options are the keyword arguments with a default other than those in
    `reserved` (filled in by the program). Help text comes from the
    function's Google-style `Args:` docstring section; `Literal[...]`
    annotations give the allowed values. Defaults that are not literals (or
    module-level names bound to literals) get no flag. A function that is not
    a plain `def` in the module's source (or a module without source) is
    imported and inspected instead.

    Raises:
      error: the module cannot be found, or has no such callable.
    """
    module_name, _, attr = path.partition(":")
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise error(f"cannot import {kind} module {module_name!r}: No module named {module_name!r}")
    source_file = getattr(spec, "origin", None)
    if source_file and source_file.endswith(".py"):
        try:
            with open(source_file, encoding="utf-8") as f:
                tree = parse_source(f.read(), source_file)
        except (SyntaxError, UnicodeDecodeError, OSError) as e:
            raise error(
                f"cannot import {kind} module {module_name!r}: {type(e).__name__}: {errors.first_line(e)}"
            ) from e
        constants = _module_constants(tree)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == attr:
                return _options_of_node(node, constants, reserved)
    return options_of(load(path, error, kind), reserved)


_AST_RACE = "AST constructor recursion depth mismatch"


def parse_source(source: str, filename: str, attempts: int = 3) -> ast.Module:
    """`ast.parse`, retried when CPython 3.11's AST builder trips over another thread.

    Before 3.12, the AST builder kept its recursion counter in per-interpreter
    state; a thread that parses while another is switched out mid-parse (TF's
    autograph parses in TFF's worker threads) makes the first call fail with
    a spurious `SystemError` (python/cpython#106905). The counter is reset by
    every call, so parsing again succeeds.

    Args:
      source: the module's text.
      filename: its path, for error messages.
      attempts: how many times to try before letting the `SystemError` through.

    Returns:
      The parsed module.
    """
    for attempt in range(attempts):
        try:
            return ast.parse(source, filename)
        except SystemError as e:
            if _AST_RACE not in str(e) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _module_constants(tree: ast.Module) -> dict[str, Any]:
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):
                constants[node.targets[0].id] = ast.literal_eval(node.value)
    return constants


def _options_of_node(node: ast.FunctionDef, constants, reserved) -> dict[str, Option]:
    args = node.args
    positional = args.posonlyargs + args.args
    pairs = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults))
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
    docs = arg_docs(ast.get_docstring(node) or "")
    found = {}
    for arg, default_node in pairs:
        if arg.arg in reserved:
            continue
        try:
            default = ast.literal_eval(default_node)
        except ValueError:
            if not (isinstance(default_node, ast.Name) and default_node.id in constants):
                continue
            default = constants[default_node.id]
        found[arg.arg] = Option(default, docs.get(arg.arg, arg.arg), _literal_choices(arg.annotation))
    return found


def _literal_choices(annotation: ast.expr | None) -> tuple[Any, ...] | None:
    if not isinstance(annotation, ast.Subscript):
        return None
    head = annotation.value
    name = head.id if isinstance(head, ast.Name) else head.attr if isinstance(head, ast.Attribute) else ""
    if name != "Literal":
        return None
    inner = annotation.slice
    items = inner.elts if isinstance(inner, ast.Tuple) else [inner]
    try:
        return tuple(ast.literal_eval(item) for item in items)
    except ValueError:
        return None


def arg_docs(doc: str) -> dict[str, str]:
    """The lines of a Google-style docstring's `Args:` section, by argument name."""
    section = re.search(r"^Args:\n(.*?)(?:^\S|\Z)", doc, re.S | re.M)
    if not section:
        return {}
    docs, current = {}, None
    for line in section.group(1).splitlines():
        match = re.match(r"^\s{2,4}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
        if match:
            current = match.group(1)
            docs[current] = match.group(2).strip()
        elif current and line.strip():
            docs[current] += " " + line.strip()
    return docs


def describe(function: Callable[..., Any]) -> str:
    """One line about a plug-in: its module docstring's first line, else the function's."""
    module = inspect.getmodule(function)
    for doc in (inspect.getdoc(module) if module else None, inspect.getdoc(function)):
        if doc:
            line = doc.strip().splitlines()[0]
            return re.sub(r"^`[\w.]+`:\s*", "", line)
    return ""
