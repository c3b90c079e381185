"""`fleet broker`: run the local broker (Mosquitto, or amqtt in-process), or write a
Mosquitto config for the same users."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from broker.local import BrokerEngine
from cli.common import CredsFileOpt, command_group, console, err_console, fail
from fleet.errors import FleetError
from fleet.protocol.topics import DEFAULT_PREFIX

# The broker runtimes and the credentials file's models load when a command runs.
if TYPE_CHECKING:
    from fleet.auth import CredentialStore

app = command_group(
    "Run the local MQTT broker (Mosquitto or amqtt) or write a Mosquitto configuration."
)

PortOption = Annotated[int, typer.Option(help="MQTT (TCP) port.")]
WsPortOption = Annotated[
    int | None, typer.Option("--ws-port", help="Also listen for MQTT over WebSocket here.")
]
PrefixOption = Annotated[
    str, typer.Option("--prefix", envvar="FLEET_PREFIX", help="Topic prefix the ACL applies to.")
]


def _users(store: CredentialStore) -> int:
    try:
        return len(store)
    except FleetError as exc:
        fail(str(exc))


@app.command()
def run(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: PortOption = 1883,
    ws_port: WsPortOption = None,
    creds: CredsFileOpt = None,
    certfile: Annotated[
        Path | None, typer.Option(help="TLS certificate (PEM); needs --keyfile.", exists=True)
    ] = None,
    keyfile: Annotated[
        Path | None, typer.Option(help="TLS private key (PEM).", exists=True)
    ] = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
    engine: Annotated[
        BrokerEngine,
        typer.Option(
            help="mosquitto (MQTT 5 and 3.1.1; files in FLEET_HOME/mosquitto, reloaded when "
            "the credentials change), amqtt (in-process, 3.1.1 only), auto = mosquitto when "
            "installed."
        ),
    ] = BrokerEngine.AUTO,
) -> None:
    """Run the local broker until Ctrl-C. Users come from `fleet creds`."""
    import asyncio
    import contextlib

    from broker.local import MosquittoBroker, local_broker
    from fleet.auth import CredentialStore, default_credentials_path

    if not logging.getLogger().handlers:
        # Refused logins and amqtt's warnings, timestamped like a server log.
        logging.basicConfig(
            level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    if (certfile is None) != (keyfile is None):
        fail("--certfile and --keyfile go together")
    store = CredentialStore(creds or default_credentials_path())
    count = _users(store)
    if count == 0:
        err_console.print(
            f"[yellow]warning:[/yellow] no users in {store.path}; every CONNECT will be refused"
            " until you add some with `fleet creds add`"
        )
    try:
        broker = local_broker(
            engine,
            store.path,
            host=host,
            port=port,
            ws_port=ws_port,
            prefix=prefix,
            certfile=certfile,
            keyfile=keyfile,
        )
    except (FleetError, ValueError) as exc:
        fail(str(exc))

    async def serve() -> None:
        await broker.start()
        ws = f", WebSocket on port {broker.ws_port}" if broker.ws_port else ""
        kind = (
            f"Mosquitto (MQTT 5 and 3.1.1; log {broker.log_path})"
            if isinstance(broker, MosquittoBroker)
            else "amqtt (MQTT 3.1.1 only)"
        )
        console.print(
            f"{kind} on {broker.url}{ws}; prefix {prefix}; {count} users from {store.path}."
            " Ctrl-C to stop."
        )
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            if isinstance(broker, MosquittoBroker):
                await broker.wait()  # ConfigError if it exits by itself
            else:
                await asyncio.Event().wait()
        finally:
            await broker.stop()

    try:
        asyncio.run(serve())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except FleetError as exc:
        fail(str(exc))
    console.print("Broker stopped.")


@app.command("mosquitto-config")
def mosquitto_config(
    directory: Annotated[Path, typer.Argument(help="Where to write mosquitto.conf, passwd, acl.")],
    creds: CredsFileOpt = None,
    port: PortOption = 1883,
    bind: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    ws_port: WsPortOption = None,
    persistence: Annotated[
        Path | None,
        typer.Option(help="Keep retained messages and sessions across restarts, here."),
    ] = None,
    run_as: Annotated[
        str | None,
        typer.Option(
            "--run-as", help="User mosquitto switches to when started as root ('root' stays)."
        ),
    ] = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
) -> None:
    """Write a Mosquitto 2 config with the same users (same hashes) and equivalent ACL."""
    from broker.mosquitto.config import write_mosquitto_config
    from fleet.auth import CredentialStore, default_credentials_path

    store = CredentialStore(creds or default_credentials_path())
    count = _users(store)
    try:
        conf = write_mosquitto_config(
            directory,
            store,
            prefix=prefix,
            port=port,
            bind=bind,
            ws_port=ws_port,
            persistence_dir=persistence,
            run_as=run_as,
        )
    except (FleetError, ValueError, OSError) as exc:
        fail(str(exc))
    console.print(f"Wrote {conf} with passwd and acl for {count} users.")
    console.print(
        f"Run: mosquitto -c {conf}   (after `fleet creds` changes: rerun this, then SIGHUP)"
    )


@app.command("ha-addon")
def ha_addon(
    directory: Annotated[
        Path, typer.Argument(help="Where to write logins.yaml and share/mosquitto/espfleet.*")
    ],
    home_user: Annotated[
        list[str] | None,
        typer.Option(
            "--home-user",
            help="A user the home's broker already has (repeatable): keeps full access "
            "under the ACL file.",
        ),
    ] = None,
    folder: Annotated[
        str, typer.Option(help="The add-on's customize.folder (under /share).")
    ] = "mosquitto",
    creds: CredsFileOpt = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
) -> None:
    """Write what Home Assistant's Mosquitto add-on needs to carry the fleet's users and ACL
    beside the home's (docs/home-assistant.md, "One broker for the home")."""
    from broker.mosquitto.ha_addon import write_ha_addon_files
    from fleet.auth import CredentialStore, default_credentials_path

    store = CredentialStore(creds or default_credentials_path())
    _users(store)
    try:
        files = write_ha_addon_files(directory, store, prefix, home_user or (), folder)
    except (FleetError, OSError) as exc:
        fail(str(exc))
    console.print(f"Wrote {files.logins} ({files.users} users), {files.conf} and {files.acl}.")
    console.print(
        "In the add-on's configuration: add the entries of logins.yaml under `logins:`, set "
        f"`customize: {{active: true, folder: {folder}}}`, copy share/{folder}/ into Home "
        "Assistant's /share folder, restart the add-on.",
        highlight=False,
    )
