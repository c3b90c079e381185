/*
 * media_core.c - peers, the speaker mix, the mic gate and per-peer statistics.
 */
#include <math.h>
#include <string.h>

#include "media_internal.h"

#define G711_RATE  MC_G711_RATE
#define G711_FRAME MC_G711_FRAME

const char *mc_codec_name(mc_codec_t codec)
{
    switch (codec) {
        case MC_CODEC_OPUS:
            return "opus";
        case MC_CODEC_PCMU:
            return "pcmu";
        case MC_CODEC_PCMA:
            return "pcma";
        case MC_CODEC_NONE:
        default:
            return "";
    }
}

uint32_t mc_codec_clock(mc_codec_t codec)
{
    return codec == MC_CODEC_OPUS ? 48000u : G711_RATE;
}

double mc_rms(const int16_t *pcm, size_t n)
{
    if (n == 0) {
        return 0.0;
    }
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        sum += (double)pcm[i] * (double)pcm[i];
    }
    return sqrt(sum / (double)n) / 32768.0;
}

bool mc_init(mc_t *m, const mc_config_t *cfg)
{
    memset(m, 0, sizeof *m);
    if (cfg->rate != 8000 && cfg->rate != 16000 && cfg->rate != 24000 && cfg->rate != 48000) {
        return false;
    }
    m->cfg = *cfg;
    if (m->cfg.opus_bitrate == 0) {
        m->cfg.opus_bitrate = 32000;
    }
    m->frame = cfg->rate / 50u;
    m->mic_on = true;
    m->next_ssrc = cfg->ssrc_seed != 0 ? cfg->ssrc_seed : 0x5eed0001u;
    m->ann.duck_q24 = 1 << 24;
    mc_set_volume(m, 100);
    return true;
}

static void peer_free(mc_t *m, mc_peer_t *p)
{
    if (p->dec != NULL && m->cfg.opus != NULL) {
        m->cfg.opus->dec_free(p->dec);
    }
    memset(p, 0, sizeof *p);
}

void mc_deinit(mc_t *m)
{
    for (size_t i = 0; i < MC_MAX_PEERS; i++) {
        if (m->peer[i].used) {
            peer_free(m, &m->peer[i]);
        }
    }
    if (m->enc != NULL && m->cfg.opus != NULL) {
        m->cfg.opus->enc_free(m->enc);
    }
    m->enc = NULL;
    mc_ann_deinit(m);
}

size_t mc_frame_samples(const mc_t *m)
{
    return m->frame;
}

void mc_set_mic(mc_t *m, bool on)
{
    m->mic_on = on;
}

void mc_set_volume(mc_t *m, int volume)
{
    if (volume < 0) {
        volume = 0;
    } else if (volume > 100) {
        volume = 100;
    }
    m->volume = volume;
    /* Squared: 50 is about -12 dB, which sounds like "half" more than -6 dB does. */
    m->gain_q15 = (int32_t)((int64_t)volume * volume * 32768 / 10000);
}

static mc_peer_t *find(mc_t *m, uint32_t id)
{
    for (size_t i = 0; i < MC_MAX_PEERS; i++) {
        if (m->peer[i].used && m->peer[i].id == id) {
            return &m->peer[i];
        }
    }
    return NULL;
}

bool mc_peer_add(mc_t *m, uint32_t id, mc_codec_t codec, uint8_t pt, bool send, bool recv)
{
    if (find(m, id) != NULL || codec == MC_CODEC_NONE || pt > 127) {
        return false;
    }
    if (codec == MC_CODEC_OPUS && m->cfg.opus == NULL) {
        return false;
    }
    mc_peer_t *p = NULL;
    for (size_t i = 0; i < MC_MAX_PEERS && p == NULL; i++) {
        if (!m->peer[i].used) {
            p = &m->peer[i];
        }
    }
    if (p == NULL) {
        return false;
    }
    if (codec == MC_CODEC_OPUS && send && m->enc == NULL) {
        m->enc = m->cfg.opus->enc_new(m->cfg.opus->ctx, m->cfg.rate, m->cfg.opus_bitrate);
        if (m->enc == NULL) {
            return false;
        }
    }
    memset(p, 0, sizeof *p);
    if (codec == MC_CODEC_OPUS && recv) {
        p->dec = m->cfg.opus->dec_new(m->cfg.opus->ctx, m->cfg.rate);
        if (p->dec == NULL) {
            return false;
        }
    }
    p->used = true;
    p->id = id;
    p->codec = codec;
    p->pt = pt;
    p->send = send;
    p->recv = recv;
    p->ssrc = m->next_ssrc++;
    p->seq = (uint16_t)(p->ssrc * 2654435761u >> 16); /* RFC 3550 wants a random start */
    p->ts = p->ssrc * 40503u;
    mc_jitter_reset(&p->jb);
    return true;
}

void mc_peer_remove(mc_t *m, uint32_t id)
{
    mc_peer_t *p = find(m, id);
    if (p != NULL) {
        peer_free(m, p);
    }
}

bool mc_peer_set_ssrc(mc_t *m, uint32_t id, uint32_t ssrc)
{
    mc_peer_t *p = find(m, id);
    if (p != NULL) {
        p->ssrc = ssrc;
    }
    return p != NULL;
}

const mc_peer_stats_t *mc_peer_stats(const mc_t *m, uint32_t id)
{
    return find((mc_t *)m, id) != NULL ? &find((mc_t *)m, id)->stats : NULL;
}

size_t mc_peer_count(const mc_t *m)
{
    size_t n = 0;
    for (size_t i = 0; i < MC_MAX_PEERS; i++) {
        n += m->peer[i].used ? 1u : 0u;
    }
    return n;
}

bool mc_peer_payload(mc_t *m, uint32_t id, uint16_t seq, uint32_t ts, const uint8_t *payload,
                     size_t len, uint64_t now_ms)
{
    mc_peer_t *p = find(m, id);
    if (p == NULL || !p->recv) {
        return false;
    }
    if (len == 0 || len > MC_MAX_PAYLOAD || (p->codec != MC_CODEC_OPUS && len != G711_FRAME)) {
        p->stats.bad_packets++; /* G.711 here is 20 ms packets: 160 bytes */
        return false;
    }
    p->stats.packets_received++;
    p->stats.bytes_received += len;
    /* RFC 3550 A.8: transit time differences in RTP units, smoothed by 1/16. */
    uint32_t clock = mc_codec_clock(p->codec);
    uint32_t transit = (uint32_t)(now_ms * clock / 1000u) - ts;
    if (p->have_transit) {
        int32_t d = (int32_t)(transit - (uint32_t)p->last_transit);
        double ad = d < 0 ? -(double)d : (double)d;
        p->jitter_ts += (ad - p->jitter_ts) / 16.0;
        p->stats.jitter_ms = p->jitter_ts * 1000.0 / (double)clock;
    }
    p->have_transit = true;
    p->last_transit = transit;
    bool ok = mc_jitter_push(&p->jb, seq, payload, len);
    p->stats.late = p->jb.late;
    p->stats.duplicates = p->jb.duplicates;
    return ok;
}

bool mc_peer_rtp(mc_t *m, uint32_t id, const uint8_t *pkt, size_t len, uint64_t now_ms)
{
    mc_peer_t *p = find(m, id);
    mc_rtp_t h;
    if (p == NULL) {
        return false;
    }
    if (!mc_rtp_parse(pkt, len, &h) || h.pt != p->pt) {
        p->stats.bad_packets++; /* RTCP, DTMF, or garbage */
        return false;
    }
    return mc_peer_payload(m, id, h.seq, h.ts, h.payload, h.payload_len, now_ms);
}

/* ---- rate conversion for G.711 ------------------------------------------------------------ */

/* rate -> 8 kHz: the mean of each group (a box filter: enough against aliasing for speech
 * at the integer ratios the core allows). */
static void down_to_8k(const int16_t *in, size_t n_in, int16_t *out)
{
    size_t r = n_in / G711_FRAME;
    for (size_t i = 0; i < G711_FRAME; i++) {
        int32_t sum = 0;
        for (size_t k = 0; k < r; k++) {
            sum += in[i * r + k];
        }
        out[i] = (int16_t)(sum / (int32_t)r);
    }
}

/* 8 kHz -> rate: linear interpolation from the previous sample (kept across frames). */
void mc_up_from_8k(const int16_t *in, int16_t *out, size_t n_out, int16_t *prev)
{
    int32_t r = (int32_t)(n_out / G711_FRAME);
    int32_t a = *prev;
    for (size_t i = 0; i < G711_FRAME; i++) {
        int32_t b = in[i];
        for (int32_t k = 0; k < r; k++) {
            out[i * (size_t)r + (size_t)k] = (int16_t)(a + (b - a) * (k + 1) / r);
        }
        a = b;
    }
    *prev = (int16_t)a;
}

/* ---- one frame ----------------------------------------------------------------------------- */

static void send_all(mc_t *m, const int16_t *pcm)
{
    bool want[4] = {false, false, false, false};
    for (size_t i = 0; i < MC_MAX_PEERS; i++) {
        if (m->peer[i].used && m->peer[i].send) {
            want[m->peer[i].codec] = true;
        }
    }
    int opus_len = -1;
    if (want[MC_CODEC_OPUS] && m->enc != NULL) {
        opus_len = m->cfg.opus->encode(m->enc, pcm, m->frame, m->enc_opus, sizeof m->enc_opus);
    }
    if (want[MC_CODEC_PCMU] || want[MC_CODEC_PCMA]) {
        int16_t narrow[G711_FRAME];
        down_to_8k(pcm, m->frame, narrow);
        for (size_t i = 0; i < G711_FRAME; i++) {
            m->enc_pcmu[i] = mc_ulaw_encode(narrow[i]);
            m->enc_pcma[i] = mc_alaw_encode(narrow[i]);
        }
    }
    for (size_t i = 0; i < MC_MAX_PEERS; i++) {
        mc_peer_t *p = &m->peer[i];
        if (!p->used || !p->send) {
            continue;
        }
        mc_rtp_t h;
        memset(&h, 0, sizeof h);
        if (p->codec == MC_CODEC_OPUS) {
            if (opus_len <= 0) {
                continue; /* the encoder failed: skip the packet, the clock still moves */
            }
            h.payload = m->enc_opus;
            h.payload_len = (size_t)opus_len;
        } else {
            h.payload = p->codec == MC_CODEC_PCMU ? m->enc_pcmu : m->enc_pcma;
            h.payload_len = G711_FRAME;
        }
        h.pt = p->pt;
        h.marker = p->stats.packets_sent == 0;
        h.seq = p->seq;
        h.ts = p->ts;
        h.ssrc = p->ssrc;
        size_t n = mc_rtp_write(&h, m->pkt, sizeof m->pkt);
        if (n > 0 && m->cfg.send != NULL) {
            m->cfg.send(m->cfg.send_ctx, p->id, m->pkt, n);
            p->stats.packets_sent++;
            p->stats.bytes_sent += h.payload_len;
        }
        p->seq++;
        p->ts += mc_codec_clock(p->codec) / 50u;
    }
}

/* One frame of this peer into m->pcm; false when it contributes nothing (not playing). */
static bool play_peer(mc_t *m, mc_peer_t *p)
{
    const uint8_t *data = NULL;
    size_t len = 0;
    mc_pop_t got = mc_jitter_pop(&p->jb, &data, &len);
    if (got == MC_POP_WAIT) {
        p->stats.level = 0.0;
        return false;
    }
    int16_t *pcm = m->pcm;
    if (got == MC_POP_LOST) {
        p->stats.packets_lost++;
    }
    if (p->codec == MC_CODEC_OPUS) {
        int n = m->cfg.opus->decode(p->dec, got == MC_POP_FRAME ? data : NULL, len, pcm, m->frame);
        if (n < 0) {
            p->stats.bad_packets++;
            n = 0;
        }
        if ((size_t)n < m->frame) {
            memset(pcm + n, 0, (m->frame - (size_t)n) * sizeof *pcm);
        }
    } else if (got == MC_POP_FRAME) {
        int16_t narrow[G711_FRAME];
        for (size_t i = 0; i < G711_FRAME; i++) {
            narrow[i] = p->codec == MC_CODEC_PCMU ? mc_ulaw_decode(data[i]) : mc_alaw_decode(data[i]);
        }
        mc_up_from_8k(narrow, pcm, m->frame, &p->up_prev);
        memcpy(p->last, pcm, m->frame * sizeof *pcm);
        p->concealed_run = 0;
    } else {
        /* G.711 has no PLC of its own: repeat the last frame, fading out, then silence. */
        unsigned run = ++p->concealed_run;
        int32_t keep = run < MC_CONCEAL_FRAMES ? (int32_t)(MC_CONCEAL_FRAMES - run) : 0;
        for (size_t i = 0; i < m->frame; i++) {
            pcm[i] = (int16_t)(p->last[i] * keep / MC_CONCEAL_FRAMES);
        }
        memcpy(p->last, pcm, m->frame * sizeof *pcm);
        p->up_prev = pcm[m->frame - 1];
    }
    p->stats.level = mc_rms(pcm, m->frame);
    return true;
}

void mc_frame(mc_t *m, const int16_t *mic, int16_t *speaker)
{
    m->frames++;
    /* The gate: a muted mic still sends (silence), so the RTP clock and the peers' jitter
     * buffers keep running and unmuting is instant. */
    if (m->mic_on && mic != NULL) {
        memcpy(m->pcm, mic, m->frame * sizeof *mic);
    } else {
        memset(m->pcm, 0, m->frame * sizeof *m->pcm);
    }
    m->mic_level = mc_rms(m->pcm, m->frame);
    send_all(m, m->pcm);

    memset(m->acc, 0, m->frame * sizeof *m->acc);
    for (size_t i = 0; i < MC_MAX_PEERS; i++) {
        mc_peer_t *p = &m->peer[i];
        if (p->used && p->recv && play_peer(m, p)) {
            for (size_t k = 0; k < m->frame; k++) {
                m->acc[k] += m->pcm[k];
            }
        }
    }
    /* An announcement or the ring plays at full level over the meeting, which is ducked. */
    bool over = mc_ann_render(m, speaker != NULL);
    if (speaker == NULL) {
        return;
    }
    for (size_t k = 0; k < m->frame; k++) {
        int64_t v = ((int64_t)m->acc[k] * m->gain_q15) >> 15;
        v = (v * mc_ann_duck_step(m, over)) >> 24;
        if (over) {
            v += m->ann_pcm[k];
        }
        if (v > INT16_MAX || v < INT16_MIN) {
            m->clipped++;
            v = v > INT16_MAX ? INT16_MAX : INT16_MIN;
        }
        speaker[k] = (int16_t)v;
    }
}
