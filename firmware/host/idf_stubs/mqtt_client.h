/* esp-mqtt include/mqtt_client.h as in ESP-IDF v5.1.2-v5.2.1 (subset). The subscribe macro
 * is that era's: no `const char *` association, so `esp_mqtt_client_subscribe(c, topic, q)`
 * with a const topic does not compile ("'_Generic' selector of type 'const char *' is not
 * compatible with any association"). Later esp-mqtt added the association. */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include "esp_err.h"
#include "esp_event.h"
typedef struct esp_mqtt_client *esp_mqtt_client_handle_t;
typedef enum esp_mqtt_event_id_t { MQTT_EVENT_ANY = -1, MQTT_EVENT_ERROR = 0, MQTT_EVENT_CONNECTED,
    MQTT_EVENT_DISCONNECTED, MQTT_EVENT_SUBSCRIBED, MQTT_EVENT_UNSUBSCRIBED, MQTT_EVENT_PUBLISHED,
    MQTT_EVENT_DATA, MQTT_EVENT_BEFORE_CONNECT, MQTT_EVENT_DELETED } esp_mqtt_event_id_t;
typedef enum esp_mqtt_error_type_t { MQTT_ERROR_TYPE_NONE = 0, MQTT_ERROR_TYPE_TCP_TRANSPORT,
    MQTT_ERROR_TYPE_CONNECTION_REFUSED, MQTT_ERROR_TYPE_SUBSCRIBE_FAILED } esp_mqtt_error_type_t;
typedef enum esp_mqtt_connect_return_code_t { MQTT_CONNECTION_ACCEPTED = 0 } esp_mqtt_connect_return_code_t;
typedef enum esp_mqtt_protocol_ver_t { MQTT_PROTOCOL_UNDEFINED = 0, MQTT_PROTOCOL_V_3_1,
    MQTT_PROTOCOL_V_3_1_1, MQTT_PROTOCOL_V_5 } esp_mqtt_protocol_ver_t;
typedef struct esp_mqtt_error_codes { esp_err_t esp_tls_last_esp_err; int esp_tls_stack_err;
    int esp_tls_cert_verify_flags; esp_mqtt_error_type_t error_type;
    esp_mqtt_connect_return_code_t connect_return_code; int esp_transport_sock_errno;
} esp_mqtt_error_codes_t;
typedef struct esp_mqtt_event_t { esp_mqtt_event_id_t event_id; esp_mqtt_client_handle_t client;
    char *data; int data_len; int total_data_len; int current_data_offset; char *topic;
    int topic_len; int msg_id; int session_present; esp_mqtt_error_codes_t *error_handle;
    bool retain; int qos; bool dup; esp_mqtt_protocol_ver_t protocol_ver;
} esp_mqtt_event_t;
typedef esp_mqtt_event_t *esp_mqtt_event_handle_t;
typedef struct esp_mqtt_client_config_t {
    struct broker_t { struct address_t { const char *uri; const char *hostname; int transport;
        const char *path; uint32_t port; } address; } broker;
    struct credentials_t { const char *username; const char *client_id; bool set_null_client_id;
        struct authentication_t { const char *password; } authentication; } credentials;
    struct session_t { struct last_will_t { const char *topic; const char *msg; int msg_len;
        int qos; int retain; } last_will; bool disable_clean_session; int keepalive;
        bool disable_keepalive; esp_mqtt_protocol_ver_t protocol_ver; } session;
    struct network_t { int reconnect_timeout_ms; int timeout_ms; } network;
    struct task_t { int priority; int stack_size; } task;
    struct buffer_t { int size; int out_size; } buffer;
} esp_mqtt_client_config_t;
typedef struct topic_t { const char *filter; int qos; } esp_mqtt_topic_t;
esp_mqtt_client_handle_t esp_mqtt_client_init(const esp_mqtt_client_config_t *config);
esp_err_t esp_mqtt_client_start(esp_mqtt_client_handle_t client);
esp_err_t esp_mqtt_client_disconnect(esp_mqtt_client_handle_t client);
#define esp_mqtt_client_subscribe(client_handle, topic_type, qos_or_size) _Generic((topic_type), \
      char *: esp_mqtt_client_subscribe_single, \
      esp_mqtt_topic_t*: esp_mqtt_client_subscribe_multiple \
    )(client_handle, topic_type, qos_or_size)
int esp_mqtt_client_subscribe_single(esp_mqtt_client_handle_t client, const char *topic, int qos);
int esp_mqtt_client_subscribe_multiple(esp_mqtt_client_handle_t client,
                                       const esp_mqtt_topic_t *topic_list, int size);
int esp_mqtt_client_unsubscribe(esp_mqtt_client_handle_t client, const char *topic);
int esp_mqtt_client_enqueue(esp_mqtt_client_handle_t client, const char *topic, const char *data,
                            int len, int qos, int retain, bool store);
esp_err_t esp_mqtt_client_register_event(esp_mqtt_client_handle_t client, esp_mqtt_event_id_t event,
                                         esp_event_handler_t event_handler, void *event_handler_arg);
