/*
 * fleet_port.h - everything the portable core needs from the platform.
 *
 * The core (fleet_core, fleet_msg, fleet_topics) never includes an ESP-IDF or
 * POSIX header: it reaches the clock, the MQTT client, the reboot switch and the
 * log through this table. main/port_esp.c implements it on the ESP32 with
 * esp-mqtt and esp_timer; host/host_device.c implements it on Linux with
 * libmosquitto; the unit tests implement it with a recorder.
 *
 * Every callback is invoked from the one task that drives the core, never from
 * an interrupt or an event handler, so implementations need no locking of their
 * own beyond what the MQTT client needs.
 */
#ifndef FLEET_PORT_H
#define FLEET_PORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fleet_msg.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    FLEET_LOG_ERROR = 0,
    FLEET_LOG_WARN = 1,
    FLEET_LOG_INFO = 2,
    FLEET_LOG_DEBUG = 3,
} fleet_log_level_t;

/* A telemetry sample; fields whose has_ flag is false are left out of the message. */
typedef struct {
    bool has_rssi;
    int32_t rssi; /* dBm of the access point we are associated with */
    bool has_channel;
    int32_t channel;
    uint32_t wifi_reconnects;
    bool has_heap;
    uint32_t heap_free; /* bytes free now */
    uint32_t heap_min;  /* lowest free heap since boot */
    bool has_cpu_load;
    double cpu_load; /* 0..1 */
    uint32_t mqtt_reconnects;
} fleet_sys_sample_t;

/*
 * The audio/WebRTC layer as the core sees it (optional: a build without audio
 * leaves port.media NULL and advertises caps.audio = false). Implementations:
 * main/fleet_audio.c (esp_peer + esp_codec_dev on the ESP32-S3) and host/host_media.c
 * (GStreamer webrtcbin), both on the media core (components/media_core). To send SDP,
 * its own trickled candidates or a refusal (MeetReject), an implementation calls
 * fleet_core_send_sdp(), fleet_core_send_candidate() or fleet_core_send_reject() from the
 * core's task.
 */
typedef struct fleet_media {
    void *ctx;
    /* The device became a participant of a session. False: audio cannot start. */
    bool (*start)(void *ctx, const char *room, const char *session, const char *participant,
                  bool mic, int volume /* -1 = unchanged */);
    void (*set_mic)(void *ctx, bool on);
    void (*set_volume)(void *ctx, int volume);
    /* A remote participant to connect to; we_offer says which side sends the offer. */
    bool (*add_peer)(void *ctx, const char *participant, bool we_offer);
    /* SDP relayed by the controller from participant `from`. */
    bool (*remote_sdp)(void *ctx, const char *from, bool is_offer, const char *sdp);
    /* Optional: a trickled candidate of `from` (an a=candidate value; NULL = end of its
     * candidates) for media section `mid`. The core calls it only after remote_sdp() for
     * that peer, holding earlier ones until then, in the order they came (protocol.md 8.6). */
    bool (*remote_candidate)(void *ctx, const char *from, const char *mid, const char *candidate);
    void (*remove_peer)(void *ctx, const char *participant);
    void (*stop)(void *ctx);
    /* Optional: per-peer audio statistics for telemetry, entries written (<= cap). Strings
     * must stay valid until the core has encoded the sample (it does so at once). */
    size_t (*stats)(void *ctx, fleet_peer_audio_t *out, size_t cap);
} fleet_media_t;

/*
 * The speaker outside the meeting's media (optional: NULL = no speaker, announce fails at
 * once): announcements (encoded 20 ms frames the platform decodes and plays mixed over the
 * meeting, which it ducks meanwhile) and the ring tone. Implementations: the media core's
 * player (mc_ann_*, mc_ring) behind host/host_media.c and main/fleet_audio.c.
 */
typedef struct fleet_player {
    void *ctx;
    /* Queue one encoded frame; false: the buffer is full or the frame cannot be taken. */
    bool (*ann_frame)(void *ctx, fleet_ann_codec_t codec, const uint8_t *data, size_t len);
    /* Drop what is queued at once (the announcement was cut off) and zero the count. */
    void (*ann_flush)(void *ctx);
    /* Frames queued and not yet played; frames played since the last flush. */
    void (*ann_progress)(void *ctx, uint32_t *queued, uint32_t *played);
    /* The ring pattern on (from its start) or off. */
    void (*ring)(void *ctx, bool on);
} fleet_player_t;

typedef struct fleet_port {
    void *ctx; /* passed back to every callback */

    /* Monotonic milliseconds since an arbitrary origin (boot). Never goes back. */
    uint64_t (*now_ms)(void *ctx);
    /* True once wall-clock time is trustworthy (SNTP synced on the ESP). */
    bool (*clock_is_set)(void *ctx);
    /* Unix time in seconds; only meaningful when clock_is_set() is true. */
    double (*unix_time)(void *ctx);

    /* MQTT. Return false when the client refused the call (not connected, queue full). */
    bool (*publish)(void *ctx, const char *topic, const char *payload, size_t len, int qos,
                    bool retain);
    bool (*subscribe)(void *ctx, const char *topic, int qos);
    bool (*unsubscribe)(void *ctx, const char *topic);

    /* Restart the device. The port decides when; before restarting it should let the
     * pending acks go out and say goodbye with fleet_core_shutdown() (protocol.md 3). */
    void (*reboot)(void *ctx);
    /* Make the device noticeable (blink, beep) for this many seconds. */
    void (*identify)(void *ctx, uint32_t seconds);
    /* One line, no trailing newline. */
    void (*log)(void *ctx, fleet_log_level_t level, const char *tag, const char *msg);

    /* Optional (NULL allowed). */
    void (*sample)(void *ctx, fleet_sys_sample_t *out);
    /* Persist the group list (set_groups) so it survives a reboot. */
    bool (*save_groups)(void *ctx, const char *const *groups, size_t count);
    /* Persist the id of a reboot command across the restart (NULL clears it); the port
     * hands it back in fleet_config_t.pending_cmd_id so the final ack can follow. */
    bool (*save_pending)(void *ctx, const char *cmd_id);
    /* Install the image at url (http:// or https://) in the background; NULL: this build
     * cannot update itself and the ota command fails at once. True: started. The port then
     * either restarts into the new image, keeping cmd_id for fleet_config_t (pending_is_ota),
     * or ends the command with fleet_core_ota_failed(); the old image keeps running. */
    bool (*ota)(void *ctx, const char *cmd_id, const char *url);
    const fleet_media_t *media;
    const fleet_player_t *player;
} fleet_port_t;

#ifdef __cplusplus
}
#endif

#endif /* FLEET_PORT_H */
