"""Mosquitto: its config, password, ACL and client-id files from the fleet's credentials
(`config`), the client-id auth plugin (`clientid.c`, built by `plugin`), the files for
Home Assistant's Mosquitto add-on (`ha_addon`) and the child process `fleet up` runs
(`process`).
"""
