/*
 * host_media.c - fleet_media_t on GStreamer webrtcbin + the media core (see host_media.h).
 */
#define GST_USE_UNSTABLE_API /* webrtcbin's library API is marked unstable */

#include "host_media.h"

#include <gst/app/gstappsink.h>
#include <gst/app/gstappsrc.h>
#include <gst/gst.h>
#include <gst/sdp/sdp.h>
#include <gst/webrtc/webrtc.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "host_opus.h"
#include "media_core.h"

#define RATE        48000u
#define FRAME       (RATE / 50u)
#define MAX_OUT     64   /* queued SDP, candidates, rejections for the main thread */
#define MAX_CANDS   4096 /* bytes of candidate lines kept per peer */
#define ID_BYTES    FLEET_PEER_BYTES
#define LATENCY_MS  20 /* webrtcbin's own jitter buffer; ours does the real work */
#define PT_OPUS     111

typedef struct {
    bool used;
    char participant[ID_BYTES];
    uint32_t mc_id;
    uint32_t ssrc; /* what we send with, announced in our SDP */
    bool we_offer;
    GstElement *pipe, *webrtc, *src;
    bool negotiated; /* a media core peer exists (under lock) */
    bool sdp_queued;
    bool offer_made;
    char cands[MAX_CANDS]; /* a=candidate lines from on-ice-candidate, in case the
                              local description lacks them */
    size_t cands_len;
    mc_codec_t codec;
    uint8_t pt;
    host_media_t *hm;
} hm_peer_t;

typedef enum { OUT_SDP, OUT_REJECT, OUT_CANDIDATE } out_kind_t;

typedef struct {
    out_kind_t kind;
    char to[ID_BYTES];
    bool is_offer;
    char *text; /* SDP, the rejection's detail, a candidate or "" = their end (malloc'ed) */
} hm_out_t;

struct host_media {
    host_media_opts_t opts;
    fleet_media_t table;
    fleet_player_t player;
    fleet_core_t *core;
    const char *codec_names[FLEET_MAX_CODECS];
    mc_codec_t codecs[FLEET_MAX_CODECS];
    size_t n_codecs;
    unsigned allowed;

    pthread_mutex_t lock; /* mc, peers[].negotiated/src, out queue, speaker */
    mc_t mc;
    hm_peer_t peers[MC_MAX_PEERS];
    uint32_t next_mc_id;
    hm_out_t out[MAX_OUT];
    size_t n_out;

    /* mic */
    int16_t *wav;
    size_t wav_len, wav_pos;
    size_t tone_phase;
    /* speaker */
    FILE *spk;
    uint32_t spk_samples;
    double level_sum;
    unsigned level_frames;

    pthread_t thread;
    volatile bool running;
};

static const char *TAG = "media";

static void logf_media(const host_media_t *hm, char level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static void logf_media(const host_media_t *hm, char level, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    fprintf(stderr, "%ld.%03ld %c [%s] %s: %s\n", (long)ts.tv_sec % 100000,
            ts.tv_nsec / 1000000L, level, hm->opts.device_id != NULL ? hm->opts.device_id : "-",
            TAG, line);
}

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- codecs -------------------------------------------------------------------------------- */

/* ssrc 0: none (codec preferences); otherwise the SSRC we send with, which webrtcbin then
 * announces in the SDP (a=ssrc): Janus routes by it. */
static const char *caps_string(mc_codec_t c, uint8_t pt, uint32_t ssrc, char *buf, size_t cap)
{
    char tail[32] = "";
    if (ssrc != 0) {
        (void)snprintf(tail, sizeof tail, ",ssrc=(uint)%lu", (unsigned long)ssrc);
    }
    if (c == MC_CODEC_OPUS) {
        (void)snprintf(buf, cap,
                       "application/x-rtp,media=audio,encoding-name=OPUS,payload=%u,"
                       "clock-rate=48000,encoding-params=(string)2%s",
                       (unsigned)pt, tail);
    } else {
        (void)snprintf(buf, cap,
                       "application/x-rtp,media=audio,encoding-name=%s,payload=%u,clock-rate=8000%s",
                       c == MC_CODEC_PCMU ? "PCMU" : "PCMA", (unsigned)pt, tail);
    }
    return buf;
}

static uint8_t static_pt(mc_codec_t c)
{
    return c == MC_CODEC_OPUS ? PT_OPUS : c == MC_CODEC_PCMU ? 0 : 8;
}

/* All our codecs in preference order, as webrtcbin's codec-preferences; `codec` (the one
 * appsrc starts with) with payload type `pt`, as appsrc's caps and these must agree. */
static GstCaps *preferences(const host_media_t *hm, mc_codec_t codec, uint8_t pt)
{
    GstCaps *caps = gst_caps_new_empty();
    for (size_t i = 0; i < hm->n_codecs; i++) {
        char s[200];
        uint8_t this_pt = hm->codecs[i] == codec ? pt : static_pt(hm->codecs[i]);
        GstCaps *one = gst_caps_from_string(caps_string(hm->codecs[i], this_pt, 0, s, sizeof s));
        gst_caps_append(caps, one);
    }
    return caps;
}

/* ---- the queue to the main thread ----------------------------------------------------------- */

static void queue_out(host_media_t *hm, out_kind_t kind, const char *to, bool is_offer,
                      const char *text)
{
    pthread_mutex_lock(&hm->lock);
    if (hm->n_out < MAX_OUT) {
        hm_out_t *o = &hm->out[hm->n_out++];
        o->kind = kind;
        (void)snprintf(o->to, sizeof o->to, "%s", to);
        o->is_offer = is_offer;
        o->text = strdup(text);
    }
    pthread_mutex_unlock(&hm->lock);
}

void host_media_poll(host_media_t *hm)
{
    hm_out_t out[MAX_OUT];
    size_t n;
    pthread_mutex_lock(&hm->lock);
    n = hm->n_out;
    memcpy(out, hm->out, n * sizeof out[0]);
    hm->n_out = 0;
    pthread_mutex_unlock(&hm->lock);
    for (size_t i = 0; i < n; i++) {
        if (out[i].text == NULL) {
            continue;
        }
        if (out[i].kind == OUT_SDP && hm->core != NULL) {
            bool ok = fleet_core_send_sdp(hm->core, out[i].to, out[i].is_offer, out[i].text);
            logf_media(hm, ok ? 'I' : 'W', "%s to %s %s (%lu bytes)",
                       out[i].is_offer ? "offer" : "answer", out[i].to, ok ? "sent" : "NOT sent",
                       (unsigned long)strlen(out[i].text));
            if (getenv("FLEET_HOST_SDP_LOG") != NULL) { /* debugging interop: the SDP itself */
                fprintf(stderr, "%s\n", out[i].text);
            }
        } else if (out[i].kind == OUT_CANDIDATE && hm->core != NULL) {
            const char *c = out[i].text;
            bool ok = fleet_core_send_candidate(hm->core, out[i].to, "0", c[0] != '\0' ? c : NULL);
            logf_media(hm, ok ? 'I' : 'W', "candidate to %s %s: %.80s", out[i].to,
                       ok ? "sent" : "NOT sent", c[0] != '\0' ? c : "end of candidates");
        } else if (out[i].kind == OUT_REJECT && hm->core != NULL) {
            (void)fleet_core_send_reject(hm->core, out[i].to, "negotiation_failed", out[i].text);
            logf_media(hm, 'W', "rejected the SDP of %s: %s", out[i].to, out[i].text);
        }
        free(out[i].text);
    }
}

/* ---- peers --------------------------------------------------------------------------------- */

static hm_peer_t *peer_find(host_media_t *hm, const char *participant)
{
    for (size_t i = 0; i < MC_MAX_PEERS; i++) {
        if (hm->peers[i].used && strcmp(hm->peers[i].participant, participant) == 0) {
            return &hm->peers[i];
        }
    }
    return NULL;
}

/* A peer's codec is settled (by the answer, ours or theirs): the media core takes over. */
static bool negotiate(hm_peer_t *p, const char *answer)
{
    host_media_t *hm = p->hm;
    mc_codec_t codec;
    uint8_t pt;
    if (!mc_sdp_audio(answer, strlen(answer), hm->allowed, &codec, &pt)) {
        return false;
    }
    char s[200];
    GstCaps *caps = gst_caps_from_string(caps_string(codec, pt, p->ssrc, s, sizeof s));
    pthread_mutex_lock(&hm->lock);
    bool ok = p->webrtc != NULL && mc_peer_add(&hm->mc, p->mc_id, codec, pt, true, true) &&
              mc_peer_set_ssrc(&hm->mc, p->mc_id, p->ssrc);
    if (ok) {
        p->negotiated = true;
        p->codec = codec;
        p->pt = pt;
        g_object_set(p->src, "caps", caps, NULL); /* what we now send */
    }
    pthread_mutex_unlock(&hm->lock);
    gst_caps_unref(caps);
    logf_media(hm, ok ? 'I' : 'W', "peer %s: %s (payload type %u)%s", p->participant,
               mc_codec_name(codec), (unsigned)pt, ok ? "" : " refused by the media core");
    return ok;
}

static void on_ice_candidate(GstElement *webrtc, guint mline, gchar *candidate, gpointer user)
{
    hm_peer_t *p = user;
    (void)webrtc;
    (void)mline;
    if (p->hm->opts.trickle) {
        /* After our SDP, which was queued before set-local-description started gathering. */
        queue_out(p->hm, OUT_CANDIDATE, p->participant, false,
                  candidate + (strncmp(candidate, "a=", 2) == 0 ? 2 : 0));
        return;
    }
    pthread_mutex_lock(&p->hm->lock);
    size_t n = strlen(candidate);
    if (p->cands_len + n + 5 < sizeof p->cands) {
        /* webrtcbin hands "candidate:..." (no "a=") */
        p->cands_len += (size_t)snprintf(p->cands + p->cands_len, sizeof p->cands - p->cands_len,
                                         "%s%s\r\n", strncmp(candidate, "a=", 2) == 0 ? "" : "a=",
                                         candidate);
    }
    pthread_mutex_unlock(&p->hm->lock);
}

/* Gathering complete: our description (with every candidate) goes to the main thread. */
static void on_gathering(GstElement *webrtc, GParamSpec *spec, gpointer user)
{
    hm_peer_t *p = user;
    (void)spec;
    GstWebRTCICEGatheringState state;
    g_object_get(webrtc, "ice-gathering-state", &state, NULL);
    if (state != GST_WEBRTC_ICE_GATHERING_STATE_COMPLETE || p->sdp_queued) {
        if (state == GST_WEBRTC_ICE_GATHERING_STATE_COMPLETE && p->hm->opts.trickle) {
            queue_out(p->hm, OUT_CANDIDATE, p->participant, false, ""); /* the end of them */
        }
        return;
    }
    GstWebRTCSessionDescription *desc = NULL;
    g_object_get(webrtc, "local-description", &desc, NULL);
    if (desc == NULL) {
        return;
    }
    gchar *text = gst_sdp_message_as_text(desc->sdp);
    bool is_offer = desc->type == GST_WEBRTC_SDP_TYPE_OFFER;
    gst_webrtc_session_description_free(desc);
    p->sdp_queued = true;
    if (strstr(text, "a=candidate:") == NULL && p->cands_len > 0) {
        /* One m-section, last in the SDP: the candidates go at its end. */
        pthread_mutex_lock(&p->hm->lock);
        gchar *with = g_strconcat(text, p->cands, NULL);
        pthread_mutex_unlock(&p->hm->lock);
        g_free(text);
        text = with;
    }
    queue_out(p->hm, OUT_SDP, p->participant, is_offer, text);
    g_free(text);
}

/* Our SDP names the SSRC we send with (a=ssrc): Janus drops RTP from an SSRC the SDP did
 * not announce, and webrtcbin announces none for RTP we make ourselves. */
static void sdp_add_ssrc(GstSDPMessage *sdp, uint32_t ssrc)
{
    char value[64];
    (void)snprintf(value, sizeof value, "%lu cname:fleet-host", (unsigned long)ssrc);
    for (guint i = 0; i < gst_sdp_message_medias_len(sdp); i++) {
        GstSDPMedia *media = (GstSDPMedia *)gst_sdp_message_get_media(sdp, i);
        if (strcmp(gst_sdp_media_get_media(media), "audio") == 0 &&
            gst_sdp_media_get_attribute_val(media, "ssrc") == NULL) {
            gst_sdp_media_add_attribute(media, "ssrc", value);
        }
    }
}

/* Our offers say a=setup:active: we are the DTLS client. As server, webrtcbin shows an
 * RSA certificate, and aiortc (its cipher list is ECDHE-ECDSA only) finds no shared cipher;
 * as client the aiortc side serves its ECDSA certificate. An offerer may pick active
 * (RFC 5763 5: actpass SHOULD, not MUST), and aiortc then takes the server role. */
static void offer_dtls_active(GstSDPMessage *sdp)
{
    for (guint i = 0; i < gst_sdp_message_medias_len(sdp); i++) {
        GstSDPMedia *media = (GstSDPMedia *)gst_sdp_message_get_media(sdp, i);
        for (guint k = 0; k < gst_sdp_media_attributes_len(media); k++) {
            const GstSDPAttribute *a = gst_sdp_media_get_attribute(media, k);
            if (a->key != NULL && strcmp(a->key, "setup") == 0) {
                GstSDPAttribute active;
                gst_sdp_attribute_set(&active, "setup", "active");
                gst_sdp_media_replace_attribute(media, k, &active);
            }
        }
    }
}

/* Trickle: our description leaves now, without candidates (they follow as messages);
 * before set-local-description, so that none can overtake it in the queue. */
static void queue_sdp_now(hm_peer_t *p, GstSDPMessage *sdp, bool is_offer)
{
    for (guint i = 0; i < gst_sdp_message_medias_len(sdp); i++) {
        GstSDPMedia *media = (GstSDPMedia *)gst_sdp_message_get_media(sdp, i);
        if (gst_sdp_media_get_attribute_val(media, "ice-options") == NULL) {
            gst_sdp_media_add_attribute(media, "ice-options", "trickle");
        }
    }
    gchar *text = gst_sdp_message_as_text(sdp);
    p->sdp_queued = true;
    queue_out(p->hm, OUT_SDP, p->participant, is_offer, text);
    g_free(text);
}

/* The description a create-offer or create-answer promise carries (NULL: none); frees it. */
static GstWebRTCSessionDescription *promised_description(GstPromise *promise, const char *field)
{
    const GstStructure *reply = gst_promise_get_reply(promise);
    GstWebRTCSessionDescription *desc = NULL;
    if (reply != NULL) {
        gst_structure_get(reply, field, GST_TYPE_WEBRTC_SESSION_DESCRIPTION, &desc, NULL);
    }
    gst_promise_unref(promise);
    return desc;
}

/* Our finished offer or answer: out at once when we trickle (candidates follow it), then
 * webrtcbin's local description, which starts gathering. Takes `desc`. */
static void set_local_description(hm_peer_t *p, GstWebRTCSessionDescription *desc, bool is_offer)
{
    if (p->hm->opts.trickle) {
        queue_sdp_now(p, desc->sdp, is_offer);
    }
    GstPromise *done = gst_promise_new();
    g_signal_emit_by_name(p->webrtc, "set-local-description", desc, done);
    gst_promise_interrupt(done);
    gst_promise_unref(done);
    gst_webrtc_session_description_free(desc);
}

static void on_offer_created(GstPromise *promise, gpointer user)
{
    hm_peer_t *p = user;
    GstWebRTCSessionDescription *offer = promised_description(promise, "offer");
    if (offer == NULL) {
        logf_media(p->hm, 'E', "peer %s: webrtcbin made no offer", p->participant);
        return;
    }
    offer_dtls_active(offer->sdp);
    sdp_add_ssrc(offer->sdp, p->ssrc);
    set_local_description(p, offer, true);
}

static void on_negotiation_needed(GstElement *webrtc, gpointer user)
{
    hm_peer_t *p = user;
    if (!p->we_offer || p->offer_made) {
        return; /* later calls (caps set after negotiation) need no new round */
    }
    p->offer_made = true;
    GstPromise *promise = gst_promise_new_with_change_func(on_offer_created, p, NULL);
    g_signal_emit_by_name(webrtc, "create-offer", NULL, promise);
}

static void on_answer_created(GstPromise *promise, gpointer user)
{
    hm_peer_t *p = user;
    GstWebRTCSessionDescription *answer = promised_description(promise, "answer");
    if (answer == NULL) {
        queue_out(p->hm, OUT_REJECT, p->participant, false,
                  "webrtcbin could not answer the offer (no codec in common?)");
        return;
    }
    sdp_add_ssrc(answer->sdp, p->ssrc);
    gchar *text = gst_sdp_message_as_text(answer->sdp);
    bool ok = negotiate(p, text);
    g_free(text);
    if (!ok) {
        gst_webrtc_session_description_free(answer);
        queue_out(p->hm, OUT_REJECT, p->participant, false, "no audio codec in common");
        return;
    }
    set_local_description(p, answer, false);
}

static void on_offer_set(GstPromise *promise, gpointer user)
{
    hm_peer_t *p = user;
    const GstStructure *reply = gst_promise_get_reply(promise);
    GError *err = NULL;
    if (reply != NULL && gst_structure_has_field(reply, "error")) {
        gst_structure_get(reply, "error", G_TYPE_ERROR, &err, NULL);
    }
    gst_promise_unref(promise);
    if (err != NULL) {
        queue_out(p->hm, OUT_REJECT, p->participant, false, err->message);
        g_error_free(err);
        return;
    }
    GstPromise *next = gst_promise_new_with_change_func(on_answer_created, p, NULL);
    g_signal_emit_by_name(p->webrtc, "create-answer", NULL, next);
}

static GstFlowReturn on_sample(GstAppSink *sink, gpointer user)
{
    hm_peer_t *p = user;
    GstSample *sample = gst_app_sink_pull_sample(sink);
    if (sample == NULL) {
        return GST_FLOW_EOS;
    }
    GstBuffer *buf = gst_sample_get_buffer(sample);
    GstMapInfo map;
    if (buf != NULL && gst_buffer_map(buf, &map, GST_MAP_READ)) {
        pthread_mutex_lock(&p->hm->lock);
        if (p->negotiated) {
            (void)mc_peer_rtp(&p->hm->mc, p->mc_id, map.data, map.size, mono_us() / 1000u);
        }
        pthread_mutex_unlock(&p->hm->lock);
        gst_buffer_unmap(buf, &map);
    }
    gst_sample_unref(sample);
    return GST_FLOW_OK;
}

/* webrtcbin found the remote stream: RTP (after SRTP and its short jitter buffer) to us. */
static void on_pad_added(GstElement *webrtc, GstPad *pad, gpointer user)
{
    hm_peer_t *p = user;
    (void)webrtc;
    if (GST_PAD_DIRECTION(pad) != GST_PAD_SRC) {
        return;
    }
    GstElement *sink = gst_element_factory_make("appsink", NULL);
    g_object_set(sink, "sync", FALSE, "async", FALSE, "max-buffers", 64, "drop", TRUE, NULL);
    GstAppSinkCallbacks cbs;
    memset(&cbs, 0, sizeof cbs);
    cbs.new_sample = on_sample;
    gst_app_sink_set_callbacks(GST_APP_SINK(sink), &cbs, p, NULL);
    gst_bin_add(GST_BIN(p->pipe), sink);
    gst_element_sync_state_with_parent(sink);
    GstPad *in = gst_element_get_static_pad(sink, "sink");
    if (gst_pad_link(pad, in) != GST_PAD_LINK_OK) {
        logf_media(p->hm, 'W', "peer %s: could not link the incoming stream", p->participant);
    }
    gst_object_unref(in);
    logf_media(p->hm, 'I', "peer %s: receiving", p->participant);
}

static GstBusSyncReply on_bus(GstBus *bus, GstMessage *msg, gpointer user)
{
    hm_peer_t *p = user;
    (void)bus;
    if (GST_MESSAGE_TYPE(msg) == GST_MESSAGE_ERROR || GST_MESSAGE_TYPE(msg) == GST_MESSAGE_WARNING) {
        GError *err = NULL;
        gchar *dbg = NULL;
        if (GST_MESSAGE_TYPE(msg) == GST_MESSAGE_ERROR) {
            gst_message_parse_error(msg, &err, &dbg);
        } else {
            gst_message_parse_warning(msg, &err, &dbg);
        }
        logf_media(p->hm, GST_MESSAGE_TYPE(msg) == GST_MESSAGE_ERROR ? 'E' : 'W', "peer %s: %s",
                   p->participant, err != NULL ? err->message : "?");
        g_clear_error(&err);
        g_free(dbg);
    }
    return GST_BUS_DROP;
}

/* appsrc -> webrtcbin, one sendrecv audio transceiver offering our codecs. appsrc starts
 * with the caps of what we will send: our first codec when we offer, the offer's choice
 * (its payload type) when we answer, as webrtcbin refuses a later change of payload type
 * ("Internal data stream error"). */
static bool peer_pipeline(hm_peer_t *p, mc_codec_t codec, uint8_t pt)
{
    host_media_t *hm = p->hm;
    GstElement *pipe = gst_pipeline_new(NULL);
    GstElement *webrtc = gst_element_factory_make("webrtcbin", NULL);
    GstElement *src = gst_element_factory_make("appsrc", NULL);
    if (pipe == NULL || webrtc == NULL || src == NULL) {
        logf_media(hm, 'E', "GStreamer lacks webrtcbin or appsrc (gstreamer1.0-plugins-bad, "
                            "gstreamer1.0-nice, gstreamer1.0-plugins-base)");
        if (pipe != NULL) {
            gst_object_unref(pipe);
        }
        return false;
    }
    char s[200];
    GstCaps *first = gst_caps_from_string(caps_string(codec, pt, p->ssrc, s, sizeof s));
    g_object_set(src, "is-live", TRUE, "format", GST_FORMAT_TIME, "do-timestamp", TRUE, "caps",
                 first, "max-bytes", (guint64)64000, "block", FALSE, NULL);
    gst_caps_unref(first);
    g_object_set(webrtc, "bundle-policy", GST_WEBRTC_BUNDLE_POLICY_MAX_BUNDLE, "latency",
                 (guint)LATENCY_MS, NULL);
    gst_bin_add_many(GST_BIN(pipe), src, webrtc, NULL);
    pthread_mutex_lock(&hm->lock);
    p->pipe = pipe;
    p->webrtc = webrtc;
    p->src = src;
    pthread_mutex_unlock(&hm->lock);
    g_signal_connect(webrtc, "on-negotiation-needed", G_CALLBACK(on_negotiation_needed), p);
    g_signal_connect(webrtc, "on-ice-candidate", G_CALLBACK(on_ice_candidate), p);
    g_signal_connect(webrtc, "notify::ice-gathering-state", G_CALLBACK(on_gathering), p);
    g_signal_connect(webrtc, "pad-added", G_CALLBACK(on_pad_added), p);
    GstBus *bus = gst_element_get_bus(pipe);
    gst_bus_set_sync_handler(bus, on_bus, p, NULL);
    gst_object_unref(bus);
    if (!gst_element_link(src, webrtc)) {
        logf_media(hm, 'E', "peer %s: appsrc does not link to webrtcbin", p->participant);
        return false;
    }
    GstWebRTCRTPTransceiver *trans = NULL;
    g_signal_emit_by_name(webrtc, "get-transceiver", 0, &trans);
    if (trans != NULL) {
        GstCaps *prefs = preferences(hm, codec, pt);
        g_object_set(trans, "direction", GST_WEBRTC_RTP_TRANSCEIVER_DIRECTION_SENDRECV,
                     "codec-preferences", prefs, NULL);
        gst_caps_unref(prefs);
        gst_object_unref(trans);
    }
    if (gst_element_set_state(pipe, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE) {
        logf_media(hm, 'E', "peer %s: the pipeline does not start", p->participant);
        return false;
    }
    return true;
}

static hm_peer_t *peer_new(host_media_t *hm, const char *participant, bool we_offer)
{
    hm_peer_t *p = NULL;
    for (size_t i = 0; i < MC_MAX_PEERS && p == NULL; i++) {
        if (!hm->peers[i].used) {
            p = &hm->peers[i];
        }
    }
    if (p == NULL || strlen(participant) >= ID_BYTES) {
        logf_media(hm, 'W', "peer %s: no room (at most %d peers)", participant, MC_MAX_PEERS);
        return NULL;
    }
    memset(p, 0, sizeof *p);
    p->used = true;
    p->hm = hm;
    p->we_offer = we_offer;
    p->mc_id = ++hm->next_mc_id;
    p->ssrc = g_random_int() | 1u; /* never 0, which caps_string reads as "none" */
    memcpy(p->participant, participant, strlen(participant) + 1);
    return p;
}

static void peer_close(host_media_t *hm, hm_peer_t *p)
{
    pthread_mutex_lock(&hm->lock);
    GstElement *pipe = p->pipe;
    mc_peer_remove(&hm->mc, p->mc_id);
    p->negotiated = false;
    p->pipe = NULL;
    p->webrtc = NULL;
    p->src = NULL;
    pthread_mutex_unlock(&hm->lock);
    if (pipe != NULL) {
        /* Outside the lock: stopping waits for streaming threads that may want it. */
        gst_element_set_state(pipe, GST_STATE_NULL);
        gst_object_unref(pipe);
    }
    p->used = false;
}

/* ---- fleet_media_t ------------------------------------------------------------------------- */

static bool media_start(void *ctx, const char *room, const char *session, const char *participant,
                        bool mic, int volume)
{
    host_media_t *hm = ctx;
    pthread_mutex_lock(&hm->lock);
    mc_set_mic(&hm->mc, mic);
    if (volume >= 0) {
        mc_set_volume(&hm->mc, volume);
    }
    pthread_mutex_unlock(&hm->lock);
    logf_media(hm, 'I', "room %s session %s as %s: mic %s, volume %d", room, session, participant,
               mic ? "on" : "off", volume);
    return true;
}

static void media_set_mic(void *ctx, bool on)
{
    host_media_t *hm = ctx;
    pthread_mutex_lock(&hm->lock);
    mc_set_mic(&hm->mc, on);
    pthread_mutex_unlock(&hm->lock);
    logf_media(hm, 'I', "mic %s", on ? "on" : "off (sending silence)");
}

static void media_set_volume(void *ctx, int volume)
{
    host_media_t *hm = ctx;
    pthread_mutex_lock(&hm->lock);
    mc_set_volume(&hm->mc, volume);
    pthread_mutex_unlock(&hm->lock);
    logf_media(hm, 'I', "volume %d", volume);
}

static bool media_add_peer(void *ctx, const char *participant, bool we_offer)
{
    host_media_t *hm = ctx;
    hm_peer_t *old = peer_find(hm, participant);
    if (old != NULL) {
        peer_close(hm, old);
    }
    hm_peer_t *p = peer_new(hm, participant, we_offer);
    if (p == NULL) {
        return false;
    }
    logf_media(hm, 'I', "peer %s: %s", participant, we_offer ? "we offer" : "waiting for its offer");
    if (we_offer && !peer_pipeline(p, hm->codecs[0], static_pt(hm->codecs[0]))) {
        peer_close(hm, p);
        return false;
    }
    return true;
}

static bool media_remote_sdp(void *ctx, const char *from, bool is_offer, const char *sdp)
{
    host_media_t *hm = ctx;
    hm_peer_t *p = peer_find(hm, from);
    if (is_offer) {
        if (p != NULL && (p->we_offer || p->pipe != NULL)) {
            peer_close(hm, p); /* a new offer from a known peer starts over */
            p = NULL;
        }
        mc_codec_t codec;
        uint8_t pt;
        if (!mc_sdp_audio(sdp, strlen(sdp), hm->allowed, &codec, &pt)) {
            queue_out(hm, OUT_REJECT, from, false, "the offer has no audio codec we use");
            if (p != NULL) {
                peer_close(hm, p);
            }
            return false;
        }
        if (p == NULL) {
            p = peer_new(hm, from, false);
        }
        if (p == NULL || !peer_pipeline(p, codec, pt)) {
            if (p != NULL) {
                peer_close(hm, p);
            }
            queue_out(hm, OUT_REJECT, from, false, "this device cannot take another peer");
            return false;
        }
    } else if (p == NULL || !p->we_offer || p->webrtc == NULL) {
        logf_media(hm, 'W', "answer from %s ignored: no offer of ours is waiting for it", from);
        return false;
    }
    GstSDPMessage *msg = NULL;
    if (gst_sdp_message_new_from_text(sdp, &msg) != GST_SDP_OK || msg == NULL) {
        queue_out(hm, OUT_REJECT, from, false, "SDP does not parse");
        if (is_offer) {
            peer_close(hm, p);
        }
        return false;
    }
    if (!is_offer && !negotiate(p, sdp)) {
        gst_sdp_message_free(msg);
        queue_out(hm, OUT_REJECT, from, false, "the answer has no audio codec we offered");
        return false;
    }
    GstWebRTCSessionDescription *desc = gst_webrtc_session_description_new(
        is_offer ? GST_WEBRTC_SDP_TYPE_OFFER : GST_WEBRTC_SDP_TYPE_ANSWER, msg);
    GstPromise *promise = is_offer ? gst_promise_new_with_change_func(on_offer_set, p, NULL)
                                   : gst_promise_new();
    g_signal_emit_by_name(p->webrtc, "set-remote-description", desc, promise);
    if (!is_offer) {
        gst_promise_interrupt(promise);
        gst_promise_unref(promise);
    }
    gst_webrtc_session_description_free(desc);
    logf_media(hm, 'I', "%s from %s taken (%lu bytes)", is_offer ? "offer" : "answer", from,
               (unsigned long)strlen(sdp));
    if (getenv("FLEET_HOST_SDP_LOG") != NULL) {
        fprintf(stderr, "%s\n", sdp);
    }
    return true;
}

/* A trickled candidate of `from` (the core hands them over only after its SDP). One audio
 * section, bundled: every candidate belongs to m-line 0's transport, whatever its mid.
 * webrtcbin queues it behind set-remote-description and takes "candidate:..." or
 * "a=candidate:..."; NULL is the end of them. */
static bool media_remote_candidate(void *ctx, const char *from, const char *mid,
                                   const char *candidate)
{
    host_media_t *hm = ctx;
    hm_peer_t *p = peer_find(hm, from);
    if (p == NULL || p->webrtc == NULL) {
        logf_media(hm, 'W', "candidate from %s ignored: no connection with it", from);
        return false;
    }
    if (candidate != NULL && strncmp(candidate, "candidate:", 10) != 0 &&
        strncmp(candidate, "a=candidate:", 12) != 0) {
        logf_media(hm, 'W', "candidate from %s ignored: not a candidate: %.60s", from, candidate);
        return false;
    }
    g_signal_emit_by_name(p->webrtc, "add-ice-candidate", 0u, candidate);
    logf_media(hm, 'I', "candidate from %s (mid %s) taken: %.80s", from, mid,
               candidate != NULL ? candidate : "end of candidates");
    return true;
}

static void media_remove_peer(void *ctx, const char *participant)
{
    host_media_t *hm = ctx;
    hm_peer_t *p = peer_find(hm, participant);
    if (p != NULL) {
        peer_close(hm, p);
        logf_media(hm, 'I', "peer %s closed", participant);
    }
}

static void media_stop(void *ctx)
{
    host_media_t *hm = ctx;
    for (size_t i = 0; i < MC_MAX_PEERS; i++) {
        if (hm->peers[i].used) {
            peer_close(hm, &hm->peers[i]);
        }
    }
    logf_media(hm, 'I', "stopped: every peer closed");
}

static size_t media_stats(void *ctx, fleet_peer_audio_t *out, size_t cap)
{
    host_media_t *hm = ctx;
    size_t n = 0;
    pthread_mutex_lock(&hm->lock);
    for (size_t i = 0; i < MC_MAX_PEERS && n < cap; i++) {
        hm_peer_t *p = &hm->peers[i];
        const mc_peer_stats_t *st = p->used && p->negotiated ? mc_peer_stats(&hm->mc, p->mc_id)
                                                             : NULL;
        if (st == NULL) {
            continue;
        }
        fleet_peer_audio_t *a = &out[n++];
        memset(a, 0, sizeof *a);
        a->peer = p->participant; /* lives as long as the peer: the core encodes at once */
        a->packets_sent = st->packets_sent;
        a->packets_received = st->packets_received;
        a->packets_lost = st->packets_lost;
        uint32_t expected = st->packets_received + st->packets_lost;
        a->has_loss = expected > 0;
        a->loss = expected > 0 ? (double)st->packets_lost / expected : 0.0;
        a->has_jitter_ms = true;
        a->jitter_ms = st->jitter_ms;
        a->has_level = true;
        a->level = st->level;
        a->codec = mc_codec_name(p->codec);
    }
    pthread_mutex_unlock(&hm->lock);
    return n;
}

/* ---- fleet_player_t: announcements and the ring ------------------------------------------- */

static bool player_ann_frame(void *ctx, fleet_ann_codec_t codec, const uint8_t *data, size_t len)
{
    host_media_t *hm = ctx;
    pthread_mutex_lock(&hm->lock);
    bool ok = mc_ann_push(&hm->mc, codec == FLEET_ANN_PCMU ? MC_CODEC_PCMU : MC_CODEC_OPUS, data,
                          len);
    pthread_mutex_unlock(&hm->lock);
    return ok;
}

static void player_ann_flush(void *ctx)
{
    host_media_t *hm = ctx;
    pthread_mutex_lock(&hm->lock);
    mc_ann_flush(&hm->mc);
    pthread_mutex_unlock(&hm->lock);
}

static void player_ann_progress(void *ctx, uint32_t *queued, uint32_t *played)
{
    host_media_t *hm = ctx;
    pthread_mutex_lock(&hm->lock);
    mc_ann_progress(&hm->mc, queued, played);
    pthread_mutex_unlock(&hm->lock);
}

static void player_ring(void *ctx, bool on)
{
    host_media_t *hm = ctx;
    pthread_mutex_lock(&hm->lock);
    mc_ring(&hm->mc, on);
    pthread_mutex_unlock(&hm->lock);
    logf_media(hm, 'I', "ring tone %s", on ? "on" : "off");
}

/* ---- audio thread -------------------------------------------------------------------------- */

static void send_rtp(void *ctx, uint32_t peer_id, const uint8_t *rtp, size_t len)
{
    host_media_t *hm = ctx; /* called by mc_frame, under the lock */
    for (size_t i = 0; i < MC_MAX_PEERS; i++) {
        hm_peer_t *p = &hm->peers[i];
        if (p->used && p->negotiated && p->mc_id == peer_id && p->src != NULL) {
            GstBuffer *buf = gst_buffer_new_memdup(rtp, len);
            (void)gst_app_src_push_buffer(GST_APP_SRC(p->src), buf); /* takes buf */
        }
    }
}

static void put_le(uint8_t *b, uint32_t v, int n)
{
    for (int i = 0; i < n; i++) {
        b[i] = (uint8_t)(v >> (8 * i));
    }
}

static void wav_header(FILE *f, uint32_t samples)
{
    uint8_t h[44];
    memcpy(h, "RIFF", 4);
    put_le(h + 4, 36 + samples * 2, 4);
    memcpy(h + 8, "WAVEfmt ", 8);
    put_le(h + 16, 16, 4);
    put_le(h + 20, 1, 2); /* PCM */
    put_le(h + 22, 1, 2); /* mono */
    put_le(h + 24, RATE, 4);
    put_le(h + 28, RATE * 2, 4);
    put_le(h + 32, 2, 2);
    put_le(h + 34, 16, 2);
    memcpy(h + 36, "data", 4);
    put_le(h + 40, samples * 2, 4);
    long at = ftell(f);
    fseek(f, 0, SEEK_SET);
    fwrite(h, 1, sizeof h, f);
    if (at > (long)sizeof h) {
        fseek(f, at, SEEK_SET);
    }
}

static void mic_frame(host_media_t *hm, int16_t *pcm)
{
    if (hm->wav != NULL) {
        for (size_t i = 0; i < FRAME; i++) {
            pcm[i] = hm->wav[hm->wav_pos];
            hm->wav_pos = (hm->wav_pos + 1) % hm->wav_len;
        }
        return;
    }
    for (size_t i = 0; i < FRAME; i++) {
        double t = (double)(hm->tone_phase + i) / RATE;
        pcm[i] = hm->opts.tone_hz > 0 ? (int16_t)(0.3 * 32767.0 * sin(2.0 * G_PI * hm->opts.tone_hz * t))
                                      : 0;
    }
    hm->tone_phase = (hm->tone_phase + FRAME) % (RATE * 100u);
}

static void *audio_thread(void *arg)
{
    host_media_t *hm = arg;
    mc_clock_t clk;
    int16_t mic[FRAME], spk[FRAME];
    mc_clock_start(&clk, mono_us());
    while (hm->running) {
        uint32_t wait = mc_clock_wait_us(&clk, mono_us());
        if (wait > 0) {
            struct timespec ts = {(time_t)(wait / 1000000u), (long)(wait % 1000000u) * 1000L};
            nanosleep(&ts, NULL);
        }
        for (unsigned due = mc_clock_due(&clk, mono_us()); due > 0; due--) {
            mic_frame(hm, mic);
            pthread_mutex_lock(&hm->lock);
            mc_frame(&hm->mc, mic, spk);
            if (hm->spk != NULL) {
                fwrite(spk, sizeof spk[0], FRAME, hm->spk);
                hm->spk_samples += FRAME;
                if (hm->spk_samples % (RATE / 2) == 0) {
                    wav_header(hm->spk, hm->spk_samples); /* readable while it grows */
                    fflush(hm->spk);
                }
            }
            hm->level_sum += mc_rms(spk, FRAME);
            bool report = hm->opts.speaker_level && ++hm->level_frames == 50;
            double level = hm->level_sum / 50.0;
            if (hm->level_frames >= 50) {
                hm->level_frames = 0;
                hm->level_sum = 0;
            }
            pthread_mutex_unlock(&hm->lock);
            if (report) {
                logf_media(hm, 'I', "speaker level %.3f", level);
            }
        }
    }
    return NULL;
}

/* ---- setup --------------------------------------------------------------------------------- */

static bool parse_codecs(host_media_t *hm, const char *list, char *why, size_t cap)
{
    static const char *const names[] = {"opus", "pcmu", "pcma"};
    static const mc_codec_t codes[] = {MC_CODEC_OPUS, MC_CODEC_PCMU, MC_CODEC_PCMA};
    char buf[128];
    (void)snprintf(buf, sizeof buf, "%s", list);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        size_t k = 0;
        while (k < 3 && strcmp(tok, names[k]) != 0) {
            k++;
        }
        if (k == 3) {
            (void)snprintf(why, cap, "--codecs: unknown codec '%s' (opus, pcmu, pcma)", tok);
            return false;
        }
        if ((hm->allowed & MC_ALLOW(codes[k])) == 0) {
            hm->allowed |= MC_ALLOW(codes[k]);
            hm->codec_names[hm->n_codecs] = names[k];
            hm->codecs[hm->n_codecs++] = codes[k];
        }
    }
    if (hm->n_codecs == 0) {
        (void)snprintf(why, cap, "--codecs: at least one of opus, pcmu, pcma");
        return false;
    }
    return true;
}

/* A mono 16-bit PCM WAV at 48 kHz (the core's rate: no resampling here). */
static bool load_wav(host_media_t *hm, const char *path, char *why, size_t cap)
{
    FILE *f = fopen(path, "rb");
    uint8_t h[44];
    if (f == NULL || fread(h, 1, sizeof h, f) != sizeof h || memcmp(h, "RIFF", 4) != 0 ||
        memcmp(h + 8, "WAVE", 4) != 0) {
        (void)snprintf(why, cap, "--mic-wav %s: not a readable WAV file", path);
        if (f != NULL) {
            fclose(f);
        }
        return false;
    }
    uint16_t fmt = (uint16_t)(h[20] | h[21] << 8), ch = (uint16_t)(h[22] | h[23] << 8);
    uint32_t rate = (uint32_t)h[24] | (uint32_t)h[25] << 8 | (uint32_t)h[26] << 16 |
                    (uint32_t)h[27] << 24;
    uint16_t bits = (uint16_t)(h[34] | h[35] << 8);
    if (fmt != 1 || ch != 1 || rate != RATE || bits != 16 || memcmp(h + 36, "data", 4) != 0) {
        (void)snprintf(why, cap, "--mic-wav %s: must be PCM mono 16-bit 48000 Hz", path);
        fclose(f);
        return false;
    }
    hm->wav = malloc(RATE * 2 * 600); /* up to ten minutes */
    hm->wav_len = hm->wav != NULL ? fread(hm->wav, 2, RATE * 600, f) : 0;
    fclose(f);
    if (hm->wav_len < FRAME) {
        (void)snprintf(why, cap, "--mic-wav %s: shorter than one frame", path);
        return false;
    }
    return true;
}

host_media_t *host_media_new(const host_media_opts_t *opts, char *why, size_t cap)
{
    host_media_t *hm = calloc(1, sizeof *hm);
    if (hm == NULL) {
        (void)snprintf(why, cap, "out of memory");
        return NULL;
    }
    hm->opts = *opts;
    if (!parse_codecs(hm, opts->codecs != NULL ? opts->codecs : "opus,pcmu,pcma", why, cap) ||
        (opts->mic_wav != NULL && !load_wav(hm, opts->mic_wav, why, cap))) {
        host_media_free(hm);
        return NULL;
    }
    if (opts->speaker_wav != NULL) {
        hm->spk = fopen(opts->speaker_wav, "wb");
        if (hm->spk == NULL) {
            (void)snprintf(why, cap, "--speaker-wav %s: cannot be written", opts->speaker_wav);
            host_media_free(hm);
            return NULL;
        }
        wav_header(hm->spk, 0);
    }
    gst_init(NULL, NULL);
    GstElementFactory *f = gst_element_factory_find("webrtcbin");
    if (f == NULL) {
        (void)snprintf(why, cap, "GStreamer has no webrtcbin: install gstreamer1.0-plugins-bad "
                                 "and gstreamer1.0-nice");
        host_media_free(hm);
        return NULL;
    }
    gst_object_unref(f);
    mc_config_t cfg = {.rate = RATE, .opus = host_opus_ops(), .send = send_rtp, .send_ctx = hm};
    pthread_mutex_init(&hm->lock, NULL);
    (void)mc_init(&hm->mc, &cfg);
    hm->table = (fleet_media_t){
        .ctx = hm,
        .start = media_start,
        .set_mic = media_set_mic,
        .set_volume = media_set_volume,
        .add_peer = media_add_peer,
        .remote_sdp = media_remote_sdp,
        .remote_candidate = media_remote_candidate,
        .remove_peer = media_remove_peer,
        .stop = media_stop,
        .stats = media_stats,
    };
    hm->player = (fleet_player_t){
        .ctx = hm,
        .ann_frame = player_ann_frame,
        .ann_flush = player_ann_flush,
        .ann_progress = player_ann_progress,
        .ring = player_ring,
    };
    hm->running = true;
    if (pthread_create(&hm->thread, NULL, audio_thread, hm) != 0) {
        hm->running = false;
        (void)snprintf(why, cap, "cannot start the audio thread");
        host_media_free(hm);
        return NULL;
    }
    return hm;
}

const fleet_media_t *host_media_table(host_media_t *hm)
{
    return &hm->table;
}

void host_media_caps(const host_media_t *hm, fleet_caps_t *caps)
{
    memset(caps, 0, sizeof *caps);
    caps->audio = true;
    caps->mic = true;
    caps->speaker = true;
    caps->n_codecs = hm->n_codecs;
    for (size_t i = 0; i < hm->n_codecs; i++) {
        caps->codecs[i] = hm->codec_names[i];
    }
}

const fleet_player_t *host_media_player(host_media_t *hm)
{
    return &hm->player;
}

void host_media_bind(host_media_t *hm, fleet_core_t *core)
{
    hm->core = core;
}

void host_media_free(host_media_t *hm)
{
    if (hm == NULL) {
        return;
    }
    if (hm->running) {
        hm->running = false;
        pthread_join(hm->thread, NULL);
    }
    for (size_t i = 0; i < MC_MAX_PEERS; i++) {
        if (hm->peers[i].used) {
            peer_close(hm, &hm->peers[i]);
        }
    }
    if (hm->table.ctx != NULL) {
        mc_deinit(&hm->mc);
        hm->core = NULL;
        host_media_poll(hm); /* frees what is still queued (the core is gone or quiet) */
        pthread_mutex_destroy(&hm->lock);
    }
    if (hm->spk != NULL) {
        wav_header(hm->spk, hm->spk_samples);
        fclose(hm->spk);
    }
    free(hm->wav);
    free(hm);
}
