/*
 * host_device.c - fleet-host-device: the real fleet core as a Linux process.
 *
 * To the control plane it is a device like any other: same topics, same birth, LWT,
 * state, acks and telemetry, MQTT 3.1.1 through libmosquitto. It is what the
 * integration tests run against real brokers, and a handy way to add devices to a
 * fleet without hardware.
 *
 *   fleet-host-device --broker mqtt://dev-1:secret@127.0.0.1:1883 --id dev-1 \
 *                     [--prefix fleet/v1] [--group kitchen]... [--tele-interval 10]
 *                     [--call-to dev-2 | --call-to group:kitchen]
 *                     [--audio [--codecs opus,pcmu,pcma] [--tone HZ | --mic-wav F.wav]
 *                              [--speaker-wav OUT.wav] [--speaker-level] [--trickle]]
 *
 * --audio: a member that meets for real (host_media.c: webrtcbin + the media core).
 * --trickle: our SDP leaves at once and our candidates follow it (protocol.md 8.6).
 * --audio also plays announcements and the ring tone (protocol.md 14) through the speaker.
 * SIGUSR1 is a short press of the call button (answer a ring, hang up a call room, or call
 * --call-to: NVS key call_to on a board).
 *
 * One thread: mosquitto_loop() runs the network and calls back into the core, so the
 * core is only ever entered from here. SIGTERM/SIGINT: publish {"online":false}
 * retained, disconnect cleanly, exit 0. A reboot command does the same goodbye and
 * re-executes the binary, handing the command id to the new image in the environment
 * (FLEET_HOST_PENDING_CMD) so that it can send the final ack.
 */
#include <errno.h>
#include <mosquitto.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fleet_core.h"
#include "host_url.h"
#ifdef FLEET_HOST_AUDIO
#include "host_media.h"
#endif

#ifndef FLEET_HOST_FW_VERSION
#define FLEET_HOST_FW_VERSION "0.0.0"
#endif

static const char *TAG = "host";

#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
#define KEEPALIVE_S    10
#define FLUSH_WAIT_MS  2000

typedef struct {
    struct mosquitto *mosq;
    fleet_core_t core;
    fleet_port_t port;
    const char *id;
    struct timespec t0;
    bool mqtt_up; /* CONNACK accepted and not disconnected since */
    bool ever_connected;
    unsigned reconnects;
    int mids[64]; /* QoS 1 publishes not yet acknowledged (0 = free slot) */
    int offline_mid;
    bool offline_sent;
    bool reboot_requested;
    bool disconnected_cb;
} host_t;

#define PENDING_ENV "FLEET_HOST_PENDING_CMD"
/* The groups set_groups stored, comma-separated ("" = none): the host's NVS. A reboot hands
 * them to the new image, where they replace the --group arguments. */
#define GROUPS_ENV "FLEET_HOST_GROUPS"

static host_t host;
static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t button_presses; /* SIGUSR1: the call button */
static char **saved_argv;
static char pending_cmd[300]; /* a reboot command id to hand to the next image */
static char saved_groups[FLEET_MAX_GROUPS * (FLEET_ID_MAX + 1) + 1];
static bool groups_saved;

/* ---- time and log ------------------------------------------------------------------------ */

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void log_line(char level, const char *tag, const char *msg)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double t = (double)(ts.tv_sec - host.t0.tv_sec) + (double)(ts.tv_nsec - host.t0.tv_nsec) / 1e9;
    fprintf(stderr, "%9.3f %c [%s] %s: %s\n", t, level, host.id != NULL ? host.id : "-", tag, msg);
}

static void logf_host(char level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void logf_host(char level, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    log_line(level, TAG, line);
}

/* ---- the port ---------------------------------------------------------------------------- */

static uint64_t port_now_ms(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)(ts.tv_sec - host.t0.tv_sec) * 1000u +
           (uint64_t)((ts.tv_nsec - host.t0.tv_nsec) / 1000000);
}

static bool port_clock_is_set(void *ctx)
{
    (void)ctx;
    return true; /* a Linux host keeps its clock with NTP */
}

static double port_unix_time(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)(ts.tv_nsec / 1000000) / 1000.0;
}

static bool port_publish(void *ctx, const char *topic, const char *payload, size_t len, int qos,
                         bool retain)
{
    host_t *h = ctx;
    int mid = 0;
    int rc = mosquitto_publish(h->mosq, &mid, topic, (int)len, payload, qos, retain);
    if (rc != MOSQ_ERR_SUCCESS) {
        logf_host('W', "publish %s failed: %s", topic, mosquitto_strerror(rc));
        return false;
    }
    if (qos > 0) {
        /* Remember it until its PUBACK; with every slot taken the oldest is forgotten (the
         * wait for acks before a goodbye is bounded anyway). */
        size_t slot = 0;
        for (size_t i = 0; i < sizeof h->mids / sizeof h->mids[0]; i++) {
            if (h->mids[i] == 0) {
                slot = i;
                break;
            }
        }
        h->mids[slot] = mid;
    }
    if (strcmp(topic, fleet_core_status_topic(&h->core)) == 0 && len == strlen(FLEET_LWT_PAYLOAD) &&
        memcmp(payload, FLEET_LWT_PAYLOAD, len) == 0) {
        h->offline_mid = mid;
    }
    return true;
}

static bool port_subscribe(void *ctx, const char *topic, int qos)
{
    host_t *h = ctx;
    int rc = mosquitto_subscribe(h->mosq, NULL, topic, qos);
    if (rc == MOSQ_ERR_SUCCESS) {
        logf_host('I', "subscribe %s", topic);
    }
    return rc == MOSQ_ERR_SUCCESS;
}

static bool port_unsubscribe(void *ctx, const char *topic)
{
    host_t *h = ctx;
    int rc = mosquitto_unsubscribe(h->mosq, NULL, topic);
    if (rc == MOSQ_ERR_SUCCESS) {
        logf_host('I', "unsubscribe %s", topic);
    }
    return rc == MOSQ_ERR_SUCCESS;
}

static void port_reboot(void *ctx)
{
    host_t *h = ctx;
    h->reboot_requested = true; /* the main loop flushes the ack first */
}

static bool port_save_pending(void *ctx, const char *cmd_id)
{
    (void)ctx;
    (void)snprintf(pending_cmd, sizeof pending_cmd, "%s", cmd_id != NULL ? cmd_id : "");
    return true;
}

static bool port_save_groups(void *ctx, const char *const *groups, size_t count)
{
    (void)ctx;
    size_t off = 0;
    saved_groups[0] = '\0';
    for (size_t i = 0; i < count; i++) {
        int n = snprintf(saved_groups + off, sizeof saved_groups - off, "%s%s", i > 0 ? "," : "",
                         groups[i]);
        if (n < 0 || (size_t)n >= sizeof saved_groups - off) {
            return false; /* cannot happen: 32 valid ids fit */
        }
        off += (size_t)n;
    }
    groups_saved = true;
    return true;
}

/* Splits a saved comma-separated list into groups[] (pointers into buf). */
static size_t split_groups(char *buf, const char **groups, size_t cap)
{
    size_t n = 0;
    for (char *tok = strtok(buf, ","); tok != NULL && n < cap; tok = strtok(NULL, ",")) {
        groups[n++] = tok;
    }
    return n;
}

static void port_identify(void *ctx, uint32_t seconds)
{
    (void)ctx;
    logf_host('I', "identify: a device would blink for %u s", (unsigned)seconds);
}

static void port_log(void *ctx, fleet_log_level_t level, const char *tag, const char *msg)
{
    (void)ctx;
    static const char letters[] = "EWID";
    log_line(letters[(unsigned)level < 4 ? (unsigned)level : 3], tag, msg);
}

static void port_sample(void *ctx, fleet_sys_sample_t *out)
{
    host_t *h = ctx;
    out->mqtt_reconnects = h->reconnects; /* no Wi-Fi and no meaningful heap on a host */
}

/* ---- libmosquitto callbacks (run inside mosquitto_loop, on this thread) -------------------- */

static void on_connect(struct mosquitto *mosq, void *obj, int rc)
{
    host_t *h = obj;
    (void)mosq;
    if (rc != 0) {
        logf_host('E', "broker refused the connection: %s", mosquitto_connack_string(rc));
        return;
    }
    if (h->ever_connected) {
        h->reconnects++;
    }
    h->ever_connected = true;
    h->mqtt_up = true;
    memset(h->mids, 0, sizeof h->mids);
    logf_host('I', "connected (MQTT 3.1.1, keepalive %d s)", KEEPALIVE_S);
    fleet_core_on_connected(&h->core);
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc)
{
    host_t *h = obj;
    (void)mosq;
    h->disconnected_cb = true;
    if (h->mqtt_up) {
        logf_host(rc == 0 ? 'I' : 'W', "disconnected%s", rc == 0 ? "" : " (connection lost)");
    }
    h->mqtt_up = false;
    memset(h->mids, 0, sizeof h->mids);
    fleet_core_on_disconnected(&h->core);
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg)
{
    host_t *h = obj;
    (void)mosq;
    fleet_core_on_message(&h->core, msg->topic, strlen(msg->topic), (const char *)msg->payload,
                          msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0);
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid)
{
    host_t *h = obj;
    (void)mosq;
    for (size_t i = 0; i < sizeof h->mids / sizeof h->mids[0]; i++) {
        if (h->mids[i] == mid) {
            h->mids[i] = 0; /* QoS 1: acknowledged (QoS 0 mids are never in the table) */
        }
    }
    if (mid == h->offline_mid) {
        h->offline_sent = true;
    }
}

/* ---- main loop --------------------------------------------------------------------------- */

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void on_button(int sig)
{
    (void)sig;
    button_presses++;
}

static void sleep_ms(uint32_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    (void)nanosleep(&ts, NULL); /* a signal cuts it short, which is what we want */
}

/* Runs the network until cond() holds or ms pass. */
static void pump_until(bool (*cond)(void), uint32_t ms)
{
    uint64_t deadline = mono_ms() + ms;
    while (!cond() && mono_ms() < deadline) {
        if (mosquitto_loop(host.mosq, 50, 1) != MOSQ_ERR_SUCCESS) {
            break;
        }
    }
}

static bool nothing_in_flight(void)
{
    for (size_t i = 0; i < sizeof host.mids / sizeof host.mids[0]; i++) {
        if (host.mids[i] != 0 && host.mqtt_up) {
            return false;
        }
    }
    return true;
}

static bool offline_confirmed(void)
{
    return host.offline_sent || !host.mqtt_up;
}

static bool disconnected(void)
{
    return host.disconnected_cb;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: fleet-host-device --broker mqtt://user:pass@host:port --id ID\n"
            "                         [--prefix fleet/v1] [--group NAME]... [--tele-interval S]\n"
            "                         [--fw VERSION] [--call-to DEVICE | --call-to group:NAME]\n"
            "                         [--audio [--codecs opus,pcmu,pcma] [--tone HZ | --mic-wav F]\n"
            "                                  [--speaker-wav OUT.wav] [--speaker-level] [--trickle]]\n");
}

int main(int argc, char **argv)
{
    const char *broker = NULL, *prefix = NULL, *fw = FLEET_HOST_FW_VERSION, *call_to = NULL;
    const char *groups[FLEET_MAX_GROUPS];
    size_t n_groups = 0;
    double tele_s = 10.0;

    bool audio = false;
#ifdef FLEET_HOST_AUDIO
    host_media_opts_t mopts = {.tone_hz = 1000.0};
#endif
    saved_argv = argv;
    clock_gettime(CLOCK_MONOTONIC, &host.t0);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--audio") == 0 || strcmp(a, "--speaker-level") == 0 ||
            strcmp(a, "--trickle") == 0) {
#ifdef FLEET_HOST_AUDIO
            audio = audio || strcmp(a, "--audio") == 0;
            mopts.speaker_level = mopts.speaker_level || strcmp(a, "--speaker-level") == 0;
            mopts.trickle = mopts.trickle || strcmp(a, "--trickle") == 0;
            continue;
#else
            fprintf(stderr, "%s: this build has no audio (GStreamer was missing)\n", a);
            return 2;
#endif
        }
        if (v == NULL && strncmp(a, "--", 2) == 0) {
            fprintf(stderr, "%s needs a value\n", a);
            usage();
            return 2;
        }
        if (strcmp(a, "--broker") == 0) {
            broker = v;
        } else if (strcmp(a, "--id") == 0) {
            host.id = v;
        } else if (strcmp(a, "--prefix") == 0) {
            prefix = v;
        } else if (strcmp(a, "--group") == 0) {
            if (n_groups >= FLEET_MAX_GROUPS) {
                fprintf(stderr, "at most %d groups\n", FLEET_MAX_GROUPS);
                return 2;
            }
            groups[n_groups++] = v;
        } else if (strcmp(a, "--tele-interval") == 0) {
            char *end;
            tele_s = strtod(v, &end);
            if (*end != '\0' || !(tele_s >= 0.0 && tele_s <= 86400.0)) {
                fprintf(stderr, "--tele-interval: seconds, 0..86400\n");
                return 2;
            }
        } else if (strcmp(a, "--fw") == 0) {
            fw = v;
        } else if (strcmp(a, "--call-to") == 0) {
            call_to = v;
#ifdef FLEET_HOST_AUDIO
        } else if (strcmp(a, "--codecs") == 0) {
            mopts.codecs = v;
        } else if (strcmp(a, "--tone") == 0) {
            char *end;
            mopts.tone_hz = strtod(v, &end);
            if (*end != '\0' || !(mopts.tone_hz >= 0.0 && mopts.tone_hz < 20000.0)) {
                fprintf(stderr, "--tone: Hz, 0 (silence) up to 20000\n");
                return 2;
            }
        } else if (strcmp(a, "--mic-wav") == 0) {
            mopts.mic_wav = v;
        } else if (strcmp(a, "--speaker-wav") == 0) {
            mopts.speaker_wav = v;
#endif
        } else {
            fprintf(stderr, "unknown argument %s\n", a);
            usage();
            return 2;
        }
        i++;
    }
    if (broker == NULL || host.id == NULL) {
        usage();
        return 2;
    }
    host_url_t url;
    char why[160];
    if (!host_url_parse(broker, &url, why, sizeof why)) {
        fprintf(stderr, "--broker: %s\n", why);
        return 2;
    }

    host.port.ctx = &host;
    host.port.now_ms = port_now_ms;
    host.port.clock_is_set = port_clock_is_set;
    host.port.unix_time = port_unix_time;
    host.port.publish = port_publish;
    host.port.subscribe = port_subscribe;
    host.port.unsubscribe = port_unsubscribe;
    host.port.reboot = port_reboot;
    host.port.identify = port_identify;
    host.port.log = port_log;
    host.port.sample = port_sample;
    host.port.save_pending = port_save_pending;
    host.port.save_groups = port_save_groups;
    host.offline_mid = -1;

    const char *stored = getenv(GROUPS_ENV);
    if (stored != NULL) {
        /* Set by set_groups before a reboot: it beats the command line, as NVS would. */
        (void)snprintf(saved_groups, sizeof saved_groups, "%s", stored);
        groups_saved = true;
        unsetenv(GROUPS_ENV);
        static char split[sizeof saved_groups];
        memcpy(split, saved_groups, sizeof split);
        n_groups = split_groups(split, groups, FLEET_MAX_GROUPS);
    }

    fleet_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
#ifdef FLEET_HOST_AUDIO
    host_media_t *hm = NULL;
    if (audio) {
        char mwhy[200];
        mopts.device_id = host.id;
        hm = host_media_new(&mopts, mwhy, sizeof mwhy);
        if (hm == NULL) {
            fprintf(stderr, "--audio: %s\n", mwhy);
            return 2;
        }
        host.port.media = host_media_table(hm);
        host.port.player = host_media_player(hm);
        host_media_caps(hm, &cfg.caps);
    }
#endif
    cfg.device_id = host.id;
    cfg.prefix = prefix;
    cfg.groups = groups;
    cfg.n_groups = n_groups;
    cfg.fw = fw;
    cfg.hw = "host";
    cfg.tele_interval_ms = (uint32_t)(tele_s * 1000.0);
    cfg.call_to = call_to;
    const char *pending = getenv(PENDING_ENV);
    if (pending != NULL) {
        (void)snprintf(pending_cmd, sizeof pending_cmd, "%s", pending);
        cfg.pending_cmd_id = pending_cmd;
        unsetenv(PENDING_ENV); /* for this image only */
    }
    if (!fleet_core_init(&host.core, &cfg, &host.port)) {
        return 2; /* the core logged why */
    }
#ifdef FLEET_HOST_AUDIO
    if (hm != NULL) {
        host_media_bind(hm, &host.core);
    }
#endif

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: sleeps and polls return early */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_button;
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    mosquitto_lib_init();
    /* Client id == device id: a second process with the same id takes the session over. */
    host.mosq = mosquitto_new(host.id, true, &host);
    if (host.mosq == NULL) {
        logf_host('E', "mosquitto_new failed: %s", strerror(errno));
        return 1;
    }
    mosquitto_int_option(host.mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_username_pw_set(host.mosq, url.has_user ? url.user : host.id,
                              url.has_pass ? url.pass : NULL);
    mosquitto_will_set(host.mosq, fleet_core_status_topic(&host.core),
                       (int)strlen(FLEET_LWT_PAYLOAD), FLEET_LWT_PAYLOAD, 1, true);
    mosquitto_connect_callback_set(host.mosq, on_connect);
    mosquitto_disconnect_callback_set(host.mosq, on_disconnect);
    mosquitto_message_callback_set(host.mosq, on_message);
    mosquitto_publish_callback_set(host.mosq, on_publish);

    logf_host('I', "fleet-host-device %s starting: broker %s:%d, prefix %s, %lu groups", fw,
              url.host, url.port, host.core.prefix, (unsigned long)n_groups);

    uint32_t backoff = BACKOFF_MIN_MS;
    bool socket_open = false;
    while (!stop_requested) {
        if (!socket_open) {
            int rc = host.ever_connected || backoff > BACKOFF_MIN_MS
                         ? mosquitto_reconnect(host.mosq)
                         : mosquitto_connect(host.mosq, url.host, url.port, KEEPALIVE_S);
            if (rc != MOSQ_ERR_SUCCESS) {
                logf_host('W', "connect to %s:%d failed: %s; retry in %u ms", url.host, url.port,
                          rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc),
                          (unsigned)backoff);
                sleep_ms(backoff);
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            socket_open = true;
        }
        while (button_presses > 0) {
            button_presses--;
            logf_host('I', "button pressed");
            fleet_core_button(&host.core, FLEET_BUTTON_SHORT);
        }
        uint32_t wait = fleet_core_tick(&host.core);
        uint32_t cap = audio ? 10 : 200; /* with audio: drain what GStreamer queued soon */
        int rc = mosquitto_loop(host.mosq, (int)(wait < cap ? wait : cap), 1);
#ifdef FLEET_HOST_AUDIO
        if (hm != NULL) {
            host_media_poll(hm);
        }
#endif
        if (host.mqtt_up) {
            backoff = BACKOFF_MIN_MS;
        }
        if (rc != MOSQ_ERR_SUCCESS) {
            if (host.mqtt_up || socket_open) {
                on_disconnect(host.mosq, &host, rc);
            }
            socket_open = false;
            logf_host('W', "connection lost (%s); reconnect in %u ms",
                      rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc),
                      (unsigned)backoff);
            sleep_ms(backoff);
            backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
            continue;
        }
        if (host.reboot_requested) {
            break;
        }
    }

    logf_host('I', host.reboot_requested ? "rebooting" : "stopping");
    if (host.mqtt_up) {
        /* The graceful goodbye (protocol.md 3): acks out, leave the meeting, {"online":false}
         * retained and acknowledged, then DISCONNECT, which suppresses the will. */
        pump_until(nothing_in_flight, FLUSH_WAIT_MS);
        fleet_core_shutdown(&host.core);
        pump_until(offline_confirmed, FLUSH_WAIT_MS);
        host.disconnected_cb = false;
        mosquitto_disconnect(host.mosq);
        pump_until(disconnected, FLUSH_WAIT_MS);
    }
    mosquitto_destroy(host.mosq);
    mosquitto_lib_cleanup();
#ifdef FLEET_HOST_AUDIO
    host_media_free(hm); /* after the goodbye: the leave closed every peer already */
#endif
    if (host.reboot_requested) {
        if (pending_cmd[0] != '\0') {
            setenv(PENDING_ENV, pending_cmd, 1);
        }
        if (groups_saved) {
            setenv(GROUPS_ENV, saved_groups, 1);
        }
        logf_host('W', "re-executing %s", saved_argv[0]);
        fflush(stderr);
        execv("/proc/self/exe", saved_argv);
        logf_host('E', "re-exec failed: %s", strerror(errno));
        return 1;
    }
    logf_host('I', "stopped");
    return 0;
}
