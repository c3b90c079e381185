"""`fleet flash`, `fleet provision`, `fleet image`: ESP-IDF builds and device identities.

Thin shells over fleet.provisioning. esptool's own progress goes to stderr (``--quiet``
drops it), so stdout carries only the result, and ``--json`` stays machine-readable.
Exit codes: 0 done, 2 bad input, 3 no board answered on the port, 1 a board answered but
the write failed (wrong chip, its partition table disagrees, a write or verify error).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO, TypeVar

import typer

from cli.common import CredsFileOpt, Exit, JsonOpt, console, escape, fail, print_json
from fleet import provisioning  # its defaults at once; esptool and the codecs when used
from fleet.errors import ConfigError, CredentialsError

if TYPE_CHECKING:
    from fleet.auth import CredentialStore
    from fleet.provisioning import ProvisionResult

T = TypeVar("T")

PortOpt = Annotated[
    str,
    typer.Option(
        "--port",
        "-p",
        envvar="ESPPORT",
        help="Serial port of the board, e.g. /dev/ttyUSB0 or /dev/ttyACM0 (env ESPPORT).",
    ),
]
BaudOpt = Annotated[
    int,
    typer.Option(
        "--baud",
        "-b",
        envvar="ESPBAUD",
        min=9600,
        help="Baud rate for writing (the ROM syncs at 115200 first; env ESPBAUD).",
    ),
]
AttemptsOpt = Annotated[
    int,
    typer.Option(
        "--connect-attempts",
        min=1,
        max=100,
        help="Times esptool tries to reset the board into download mode (about 0.8 s each).",
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Do not show esptool's progress on stderr.")
]
BuildDirArg = Annotated[
    Path,
    typer.Argument(
        help="ESP-IDF build directory (holds flasher_args.json), e.g. firmware/build.",
        file_okay=False,
    ),
]
DeviceIdOpt = Annotated[
    str, typer.Option("--device-id", help="Device id: a-z, 0-9 and '-', at most 64.")
]
SsidOpt = Annotated[str, typer.Option("--wifi-ssid", help="Wi-Fi network name (1-32 bytes).")]
PasswordOpt = Annotated[
    str,
    typer.Option(
        "--wifi-password",
        envvar="FLEET_WIFI_PASSWORD",
        help="WPA2 passphrase, 8-63 characters; '' for an open network "
        "(env FLEET_WIFI_PASSWORD keeps it out of shell history).",
    ),
]
# Deliberately not FLEET_BROKER: that is the URL this CLI uses, with the controller's user
# and often 127.0.0.1; a device needs an address it can reach and logs in as itself.
DeviceBrokerOpt = Annotated[
    str,
    typer.Option(
        "--broker",
        help="Broker URL as the device reaches it, mqtt://host:1883 or mqtts://host:8883 "
        "(no user:password: the device logs in with its id and secret).",
    ),
]
GroupOpt = Annotated[
    list[str] | None,
    typer.Option("--group", "-g", help="Group of the device (repeat, or comma-separate)."),
]
NtpOpt = Annotated[
    str | None,
    typer.Option("--ntp", help="SNTP server (default: the firmware's, see menuconfig)."),
]
CallToOpt = Annotated[
    str | None,
    typer.Option(
        "--call-to",
        help="Where the device's call button calls: a device id, or group:NAME (default: nowhere).",
    ),
]
PartitionsOpt = Annotated[
    Path | None,
    typer.Option(
        "--partitions",
        help="Partition table, CSV or built .bin (default: the build's table with "
        "--build-dir, else firmware/partitions.csv).",
        dir_okay=False,
    ),
]
ReplaceOpt = Annotated[
    bool,
    typer.Option(
        "--replace", help="Re-provision a device that has a credential: issue a new secret."
    ),
]


def _call(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run a provisioning call; its errors become one line and an exit code."""
    from fleet.provisioning.errors import BoardNotFound, FlashFailed

    try:
        return fn(*args, **kwargs)
    except BoardNotFound as exc:
        fail(str(exc), Exit.UNREACHABLE)
    except FlashFailed as exc:
        fail(str(exc), Exit.NOT_CONVERGED)
    except (ConfigError, CredentialsError) as exc:
        fail(str(exc), Exit.USAGE)
    raise AssertionError("unreachable")  # fail() always raises


def _esptool_output(quiet: bool) -> TextIO | None:
    return None if quiet else sys.stderr


def _store(creds: Path | None) -> CredentialStore:
    from fleet.auth import CredentialStore, default_credentials_path

    return CredentialStore(creds or default_credentials_path())


def flash(
    build_dir: BuildDirArg,
    port: PortOpt,
    baud: BaudOpt = provisioning.DEFAULT_BAUD,
    connect_attempts: AttemptsOpt = provisioning.DEFAULT_CONNECT_ATTEMPTS,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write an ESP-IDF build (bootloader, partition table, app) to the board on PORT.

    The files and the chip come from BUILD_DIR/flasher_args.json, as for `idf.py flash`.
    NVS is left alone, so a provisioned device keeps its identity.
    """
    result = _call(
        provisioning.flash,
        port,
        build_dir,
        baud,
        connect_attempts=connect_attempts,
        output=_esptool_output(quiet),
    )
    if as_json:
        print_json(result.to_json())
        return
    parts = ", ".join(f"{f.name} at {f.offset:#x}" for f in result.files)
    console.print(f"Flashed {escape(result.chip)} on {escape(port)}: {escape(parts)}")


def provision(
    port: PortOpt,
    device_id: DeviceIdOpt,
    wifi_ssid: SsidOpt,
    wifi_password: PasswordOpt,
    broker: DeviceBrokerOpt,
    group: GroupOpt = None,
    ntp: NtpOpt = None,
    call_to: CallToOpt = None,
    creds: CredsFileOpt = None,
    partitions: PartitionsOpt = None,
    build_dir: Annotated[
        Path | None,
        typer.Option(
            "--build-dir",
            help="ESP-IDF build directory: its partition table and chip are used.",
            file_okay=False,
        ),
    ] = None,
    chip: Annotated[
        str, typer.Option("--chip", help="esp32s3, esp32c3, ... (default: detect).")
    ] = "auto",
    replace: ReplaceOpt = False,
    baud: BaudOpt = provisioning.DEFAULT_BAUD,
    connect_attempts: AttemptsOpt = provisioning.DEFAULT_CONNECT_ATTEMPTS,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Give the board on PORT its identity: a broker credential and its NVS config.

    Issues the device's credential in the credentials file; its secret is never shown.
    Writes NVS namespace 'fleet' (id, secret, broker URL, Wi-Fi, groups), resets the board.
    If writing fails, the new credential is removed again.
    """
    table_offset = provisioning.PARTITION_TABLE_OFFSET
    if build_dir is not None:
        build = _call(provisioning.read_flasher_args, build_dir)
        table_offset = build.table_offset
        chip = build.chip if chip == "auto" else chip
    table = partitions or _call(provisioning.default_partition_table, build_dir)
    result = _call(
        provisioning.provision,
        port,
        device_id,
        wifi_ssid,
        wifi_password,
        broker,
        group or [],
        _store(creds),
        table,
        baud,
        replace=replace,
        ntp=ntp,
        call_to=call_to,
        chip=chip,
        table_offset=table_offset,
        connect_attempts=connect_attempts,
        output=_esptool_output(quiet),
    )
    if as_json:
        print_json(result.to_json())
        return
    console.print(
        f"Provisioned [bold]{escape(result.device_id)}[/bold] on {escape(port)} "
        f"({escape(result.chip or '?')}): {_summary(result)}"
    )


def image(
    device_id: DeviceIdOpt,
    wifi_ssid: SsidOpt,
    wifi_password: PasswordOpt,
    broker: DeviceBrokerOpt,
    build_dir: Annotated[
        Path,
        typer.Option(
            "--build-dir",
            help="ESP-IDF build directory (holds flasher_args.json).",
            file_okay=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Factory image to write (mode 0600).", dir_okay=False),
    ],
    group: GroupOpt = None,
    ntp: NtpOpt = None,
    call_to: CallToOpt = None,
    creds: CredsFileOpt = None,
    partitions: PartitionsOpt = None,
    replace: ReplaceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write one device's factory image: the build plus its NVS, to flash at offset 0.

    Needs no board. Issues the device's credential like `fleet provision`.
    The file holds the device's secret and Wi-Fi password: it is written mode 0600.
    """
    result = _call(
        provisioning.merged_image,
        build_dir,
        device_id,
        wifi_ssid,
        wifi_password,
        broker,
        group or [],
        _store(creds),
        out,
        partitions=partitions,
        replace=replace,
        ntp=ntp,
        call_to=call_to,
        output=None,  # merge_bin's notes say nothing our summary does not
    )
    if as_json:
        print_json(result.to_json())
        return
    console.print(
        f"Wrote {escape(str(out))} ({result.image_size} bytes) for "
        f"[bold]{escape(result.device_id)}[/bold]: {_summary(result)}"
    )
    console.print(
        f"Flash it at 0x0: esptool --chip {escape(result.chip or 'auto')} write-flash 0x0 "
        f"{escape(str(out))}",
        highlight=False,
    )


def _summary(result: ProvisionResult) -> str:
    groups = ", ".join(result.groups) if result.groups else "none"
    verb = "replaced" if result.replaced else "added"
    return escape(
        f"NVS at {result.nvs.offset:#x}, broker {result.broker_url}, groups {groups}; "
        f"credential {verb} in {result.creds_path}"
    )
