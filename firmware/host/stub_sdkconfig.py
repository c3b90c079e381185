"""Writes the sdkconfig.h that ESP-IDF's Kconfig gives main/ for one board, for the stub check.

    python stub_sdkconfig.py BOARD OUT_HEADER

BOARD is one of BOARDS below: a target and the sdkconfig defaults files that choose it, as
firmware/README.md builds them. main/Kconfig.projbuild is evaluated with kconfiglib (the
library ESP-IDF's own Kconfig tool grew from) over those defaults, so the header defines
exactly the espfleet options Kconfig would: an option that `depends on` something unset is
absent, as in a real build. The IDF symbols it refers to are declared here with their
meaning for the target; every other line of the defaults files is IDF's and ignored.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import kconfiglib

FIRMWARE = Path(__file__).resolve().parent.parent

BOARDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "none": ("esp32c3", ()),
    "qemu": ("esp32c3", ("sdkconfig.defaults.qemu",)),
    "s3": ("esp32s3", ()),
    "korvo2": ("esp32s3", ("sdkconfig.defaults.korvo2",)),
    "xiao": ("esp32s3", ("sdkconfig.defaults.xiao_s3_sense",)),
}

# What main/Kconfig.projbuild names from ESP-IDF's own Kconfig tree.
IDF_SYMBOLS = """
config IDF_TARGET
    string
    default "{target}"
config IDF_TARGET_ESP32C3
    bool
    default {c3}
config IDF_TARGET_ESP32S3
    bool
    default {s3}
config ETH_USE_OPENETH
    bool
"""


def write_header(board: str, out: Path) -> None:
    target, extra = BOARDS[board]
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / "Kconfig"
        idf = IDF_SYMBOLS.format(
            target=target,
            c3="y" if target == "esp32c3" else "n",
            s3="y" if target == "esp32s3" else "n",
        )
        top.write_text(f'{idf}\nsource "{FIRMWARE / "main" / "Kconfig.projbuild"}"\n')
        kconf = kconfiglib.Kconfig(str(top), warn_to_stderr=False)
        kconf.warn_assign_undef = False
        for name in ("sdkconfig.defaults", f"sdkconfig.defaults.{target}", *extra):
            kconf.load_config(str(FIRMWARE / name), replace=False)
        kconf.write_autoconf(str(out))


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in BOARDS:
        print(f"usage: stub_sdkconfig.py {{{'|'.join(BOARDS)}}} OUT_HEADER", file=sys.stderr)
        return 2
    write_header(argv[1], Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
