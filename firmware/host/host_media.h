/*
 * host_media.h - fleet_media_t for fleet-host-device --audio: GStreamer's webrtcbin for
 * WebRTC (ICE, DTLS-SRTP, RTP/RTCP), the media core (components/media_core) for
 * everything audio, libopus for Opus.
 *
 * One webrtcbin per peer. Our SDP goes out once gathering is complete, with every
 * candidate inside it (vanilla ICE), or with opts.trickle at once, each candidate after it
 * and then the end of them (protocol.md 8.6); a peer's trickled candidates go to
 * webrtcbin's add-ice-candidate as the core hands them over. RTP travels as RTP: the media core makes the packets we send
 * (appsrc -> webrtcbin) and reads the ones we get (webrtcbin -> appsink).
 *
 * Threads: the core (fleet_core) and every fleet_media_t callback run on the main thread;
 * GStreamer's threads only queue what the main thread must send (SDP, rejections), which
 * host_media_poll() drains; a 20 ms audio thread runs the media core (mic in, speaker out).
 * The media core is behind one mutex.
 */
#ifndef HOST_MEDIA_H
#define HOST_MEDIA_H

#include <stdbool.h>
#include <stddef.h>

#include "fleet_core.h"

typedef struct host_media host_media_t;

typedef struct {
    const char *codecs; /* comma-separated, preference order: "opus,pcmu,pcma" */
    double tone_hz;     /* the microphone hears this tone (0 = silence) ... */
    const char *mic_wav; /* ... or this WAV file (mono 16-bit, looped), if set */
    const char *speaker_wav; /* the speaker writes here (48 kHz mono 16-bit), or NULL */
    bool speaker_level;      /* log the speaker's level once a second */
    bool trickle;            /* our SDP at once, our candidates after it (protocol.md 8.6) */
    const char *device_id;   /* for log lines */
} host_media_opts_t;

/* NULL with a reason in why (bad codec list, unreadable WAV, GStreamer missing). */
host_media_t *host_media_new(const host_media_opts_t *opts, char *why, size_t why_cap);
/* The table for fleet_port_t.media, and the caps to advertise. */
const fleet_media_t *host_media_table(host_media_t *hm);
void host_media_caps(const host_media_t *hm, fleet_caps_t *caps);
/* The table for fleet_port_t.player: announcements and the ring tone through the same
 * speaker (and --speaker-wav) as the meeting, whether or not a meeting runs. */
const fleet_player_t *host_media_player(host_media_t *hm);
/* The core to send SDP through (set once it is initialised). */
void host_media_bind(host_media_t *hm, fleet_core_t *core);
/* Main thread: send what GStreamer's threads queued. */
void host_media_poll(host_media_t *hm);
void host_media_free(host_media_t *hm);

#endif
