"""The package's layering, as docs/architecture.md draws it: each folder is one box of the
data flow, and a module imports only from its own box or the boxes below it."""

import ast
import importlib
import pathlib

import zstore

PACKAGE = pathlib.Path(zstore.__file__).parent

# Lowest first. _write and _read are peers: neither imports the other.
LAYERS = {
    "errors": 0, "_version": 0, "_tasks": 0, "_text": 0, "_progress": 0, "_budget": 0,
    "_compat": 0, "_options": 0,
    "_format": 1,
    "_plan": 2,
    "_storage": 3, "_ranks": 3,
    "_write": 4, "_read": 4,
    "_series": 5, "_convert": 5,
    "_cli": 6,
    "__init__": 7, "__main__": 7, "testing": 7, "dcp": 7, "hf": 7,
}


def _box(module: str) -> str:
    """The box of a dotted module name inside zstore: its first component below it."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: pathlib.Path) -> set[str]:
    """Every zstore module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "zstore"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "zstore":
                found.add(node.module)
    return found


def _modules() -> dict[str, pathlib.Path]:
    return {".".join(("zstore", *p.relative_to(PACKAGE).with_suffix("").parts)): p
            for p in PACKAGE.rglob("*.py")}


def test_every_module_belongs_to_a_box():
    unplaced = sorted(m for m in _modules() if _box(m) not in LAYERS
                      and _box(m).removesuffix(".__init__") not in LAYERS)
    assert not unplaced, f"modules outside every box of the architecture: {unplaced}"


def test_no_module_imports_from_a_box_above_its_own():
    upward = []
    for module, path in _modules().items():
        own = _box(module)
        for imported in _imports(path):
            other = _box(imported)
            if other == "__init__" and imported != "zstore":
                continue
            if LAYERS[other] > LAYERS[own] or (
                    own != other and {own, other} == {"_write", "_read"}):
                upward.append(f"{module} imports {imported}")
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def test_implementation_boxes_are_private():
    public = sorted(p.name for p in PACKAGE.iterdir()
                    if p.is_dir() and (p / "__init__.py").exists() and not p.name.startswith("_"))
    assert not public, f"implementation packages without a leading underscore: {public}"


def test_only_the_compat_module_imports_zarr_internals():
    inside = sorted(str(path.relative_to(PACKAGE)) for module, path in _modules().items()
                    if module != "zstore._compat"
                    and any(name.startswith("zarr.core") for name in _zarr_imports(path)))
    assert not inside, f"modules importing zarr.core outside zstore/_compat.py: {inside}"


def _zarr_imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


# Modules a test may import beyond the public ones and the box faces: each is where a
# fault is injected (monkeypatched), which only works on the module that calls it.
SEAMS = {
    "zstore._write.writer": "_write_array, the write of one array, fails or stalls",
    "zstore._write.lease": "replace and get_versioned, the lease's conditional writes",
    "zstore._read.verify": "open_checkpoint, as verify reaches it; and verify(url) itself",
    "zstore._write.delete": "delete(url), the command line's rm",
}


def test_no_face_hides_a_module_of_its_box():
    """A face exporting ``verify`` from ``verify.py`` would shadow the module: then
    ``import zstore._read.verify as m`` (and monkeypatching it) gets the function."""
    hiding = []
    for box in LAYERS:
        init = PACKAGE / box / "__init__.py"
        if init.exists():
            face = importlib.import_module(f"zstore.{box}")
            hiding += [f"zstore.{box}.{p.stem}" for p in init.parent.glob("*.py")
                       if p.stem in getattr(face, "__all__", ())]
    assert not hiding, f"faces exporting a name that is also a module of their box: {hiding}"


def test_tests_import_the_public_api_box_faces_or_named_seams():
    """A rename inside a box breaks no test: tests import ``zstore``, ``zstore.errors``,
    ``zstore.testing``, a box's face (its ``__init__``), or one of ``SEAMS``."""
    faces = {f"zstore.{box}" for box in LAYERS if box not in ("__init__",)}
    allowed = {"zstore"} | faces | set(SEAMS)
    tests = pathlib.Path(__file__).parent
    reaching = sorted(f"{path.name} imports {module}" for path in tests.glob("*.py")
                      for module in _imports(path) if module not in allowed)
    assert not reaching, "tests importing a box's internals:\n" + "\n".join(reaching)
