"""npdc: NumPy Deep Compression, a framework-free toolkit that makes trained ResNets small.

The public Python API (npdc/api.py) is re-exported here lazily: `import npdc` loads neither NumPy
nor Numba and changes nothing in the process; the first use of `npdc.compress`, `npdc.evaluate`,
... loads the library. Process-wide speed settings are `npdc.tune_process()` (npdc/process.py),
which the command line calls and a script may call; importing npdc never applies them.

Two API names are also the names of submodules (npdc/compress/ and npdc/evaluate.py). On this
package they stay the API functions even after those submodules are imported, and anything the
function does not have is looked up on the submodule, so `npdc.compress(...)` runs a compression
and `import npdc.compress.prune as prune` still finds the module.
"""

import functools
import importlib
import importlib.util
import sys
import types

from npdc.errors import UserError
from npdc.process import tune_process

__version__ = "0.1.0"

API = ("load_model", "load_dataset", "save_model", "evaluate", "sensitivity", "prune", "compress",
       "decompress", "import_checkpoint", "export")
__all__ = [*API, "tune_process", "UserError", "__version__"]


class _FunctionOverModule:
    """An API function published under the name of a submodule: calling it runs the function,
    and an attribute it lacks is the submodule's."""

    def __init__(self, function, module_name):
        functools.update_wrapper(self, function)
        self._module_name = module_name

    def __call__(self, *args, **kwargs):
        return self.__wrapped__(*args, **kwargs)

    def __getattr__(self, name):
        if name == "_module_name":  # not set yet (a copy being built): no module to ask
            raise AttributeError(name)
        return getattr(importlib.import_module(self._module_name), name)

    def __repr__(self):
        return f"<npdc API function {self.__name__} (also the module {self._module_name})>"


class _Package(types.ModuleType):
    """The npdc package: an import of npdc.compress or npdc.evaluate does not displace the API
    function of that name."""

    def __setattr__(self, name, value):
        if name in API and isinstance(value, types.ModuleType):
            return  # the submodule stays reachable in sys.modules and through the function
        super().__setattr__(name, value)


def __getattr__(name):
    if name not in API:
        raise AttributeError(f"module 'npdc' has no attribute {name!r}")
    from npdc import api  # the one import of a higher floor: lazy, so `import npdc` stays light

    value = getattr(api, name)
    if importlib.util.find_spec(f"npdc.{name}") is not None:
        value = _FunctionOverModule(value, f"npdc.{name}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


sys.modules[__name__].__class__ = _Package
