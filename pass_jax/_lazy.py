"""Package namespaces whose names import their submodule on first use (PEP 562), so importing a
package (the CLI parser imports several) costs nothing until a name is used."""
from __future__ import annotations

import importlib
from typing import Callable, Mapping


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], object]:
    """A module `__getattr__`: `name` is `name` of the module `where[name]`, relative to `package` (a
    leading dot goes one level up), looked up on every access (so it shows the module's current value)."""
    modules = set(where.values())

    def __getattr__(name: str):
        if name in modules:  # a submodule, e.g. for monkeypatching a name where it is used
            return importlib.import_module("." + name, package)
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module("." + where[name], package), name)
    return __getattr__


def exports(**modules: str) -> dict[str, str]:
    """{name: submodule} from submodule="name name ...", for `lazy_exports`."""
    return {name: module for module, names in modules.items() for name in names.split()}
