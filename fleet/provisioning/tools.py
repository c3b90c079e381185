"""esptool and the NVS generator, imported when first needed.

Importing them costs about 0.2 s each, which every other `fleet` command would pay otherwise.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from fleet.provisioning.errors import ProvisioningError


def load_tool(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ProvisioningError(
            f"{exc.name or module} is not installed: pip install esptool esp-idf-nvs-partition-gen"
        ) from None
