"""The fleet's MQTT broker runtimes: `broker.amqtt` (the embedded pure-Python broker and
its plugins) and `broker.mosquitto` (Mosquitto's files, its client-id plugin, the
process `fleet up` runs); `broker.local` picks one.

Who may do what (users, roles, the ACL, client ids) is `fleet.auth`, which both
brokers enforce. Importing this package stays light (no amqtt).
"""
