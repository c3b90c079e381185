"""The embedded broker: amqtt 0.12.1 in-process, corrected for fleet scale (`fixes`),
with the fleet's authentication and ACL as amqtt plugins (`plugins`) and bounds on what
a socket may cost (`admission`); `embedded.EmbeddedBroker` runs it. MQTT 3.1.1 only.
"""
