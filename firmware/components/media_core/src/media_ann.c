/*
 * media_ann.c - the announcement player, the ring tone and the meeting's ducking.
 *
 * Announcement frames wait encoded in a byte ring (MC_ANN_BYTES, MC_ANN_FRAMES) and are
 * decoded one per 20 ms frame by mc_frame(), which mixes them at full level over the
 * meeting; the meeting's gain ramps to MC_DUCK_GAIN in MC_DUCK_DOWN_MS while an
 * announcement plays or the ring sounds, and back to 1 in MC_DUCK_UP_MS once they stop.
 */
#include <math.h>
#include <string.h>

#include "media_internal.h"

#define ONE_Q24      (1 << 24)
#define DUCK_Q24     ((int32_t)(MC_DUCK_GAIN * ONE_Q24))
#define RING_HZ1     440.0
#define RING_HZ2     480.0
#define RING_AMP     0.15 /* each tone: 0.3 of full scale at the peak of both */
#define RING_FADE_MS 5u
#define PI           3.14159265358979323846

bool mc_ann_push(mc_t *m, mc_codec_t codec, const uint8_t *data, size_t len)
{
    mc_ann_t *a = &m->ann;
    if (data == NULL || len == 0 || len > MC_ANN_FRAME_MAX || a->count >= MC_ANN_FRAMES) {
        return false;
    }
    if (codec == MC_CODEC_PCMU) {
        if (len != MC_G711_FRAME) {
            return false;
        }
    } else if (codec == MC_CODEC_OPUS) {
        if (m->cfg.opus == NULL) {
            return false;
        }
        if (a->dec == NULL) {
            a->dec = m->cfg.opus->dec_new(m->cfg.opus->ctx, m->cfg.rate);
            if (a->dec == NULL) {
                return false;
            }
        }
    } else {
        return false;
    }
    size_t pad = a->write + len > MC_ANN_BYTES ? MC_ANN_BYTES - a->write : 0;
    if (a->used + pad + len > MC_ANN_BYTES) {
        return false;
    }
    size_t off = pad > 0 ? 0 : a->write;
    size_t slot = (a->head + a->count) % MC_ANN_FRAMES;
    memcpy(a->buf + off, data, len);
    a->frame[slot].off = (uint16_t)off;
    a->frame[slot].len = (uint16_t)len;
    a->frame[slot].pad = (uint16_t)pad;
    a->frame[slot].codec = (uint8_t)codec;
    a->write = off + len;
    a->used += pad + len;
    a->count++;
    return true;
}

void mc_ann_flush(mc_t *m)
{
    mc_ann_t *a = &m->ann;
    a->head = 0;
    a->count = 0;
    a->write = 0;
    a->used = 0;
    a->played = 0;
    a->up_prev = 0;
}

void mc_ann_progress(const mc_t *m, uint32_t *queued, uint32_t *played)
{
    *queued = (uint32_t)m->ann.count;
    *played = m->ann.played;
}

void mc_ring(mc_t *m, bool on)
{
    m->ann.ring = on;
    m->ann.ring_pos = 0;
}

double mc_duck_gain(const mc_t *m)
{
    return (double)m->ann.duck_q24 / ONE_Q24;
}

void mc_ann_deinit(mc_t *m)
{
    if (m->ann.dec != NULL && m->cfg.opus != NULL) {
        m->cfg.opus->dec_free(m->ann.dec);
    }
    m->ann.dec = NULL;
}

/* The next queued frame decoded into pcm (frame samples); false when none was queued. */
static bool next_frame(mc_t *m, int16_t *pcm, bool render)
{
    mc_ann_t *a = &m->ann;
    if (a->count == 0) {
        return false;
    }
    size_t slot = a->head;
    const uint8_t *data = a->buf + a->frame[slot].off;
    size_t len = a->frame[slot].len;
    if (render && a->frame[slot].codec == MC_CODEC_PCMU) {
        int16_t narrow[MC_G711_FRAME];
        for (size_t i = 0; i < MC_G711_FRAME; i++) {
            narrow[i] = mc_ulaw_decode(data[i]);
        }
        mc_up_from_8k(narrow, pcm, m->frame, &a->up_prev);
    } else if (render) {
        int n = a->dec != NULL ? m->cfg.opus->decode(a->dec, data, len, pcm, m->frame) : -1;
        if (n < 0) {
            n = 0; /* a frame that does not decode is a frame of silence */
        }
        if ((size_t)n < m->frame) {
            memset(pcm + n, 0, (m->frame - (size_t)n) * sizeof *pcm);
        }
    }
    a->used -= (size_t)a->frame[slot].pad + len;
    a->head = (a->head + 1) % MC_ANN_FRAMES;
    a->count--;
    if (a->count == 0) {
        a->write = 0; /* empty: start the ring over, no padding needed */
        a->used = 0;
    }
    a->played++;
    return true;
}

/* Adds the ring tone (2 s on, 4 s off, faded in and out over 5 ms) to pcm. */
static void ring_into(mc_t *m, int16_t *pcm)
{
    mc_ann_t *a = &m->ann;
    uint32_t rate = m->cfg.rate;
    uint32_t period = rate / 1000u * (MC_RING_ON_MS + MC_RING_OFF_MS);
    uint32_t on = rate / 1000u * MC_RING_ON_MS;
    uint32_t fade = rate / 1000u * RING_FADE_MS;
    for (size_t i = 0; i < m->frame; i++) {
        uint32_t t = (a->ring_pos + (uint32_t)i) % period;
        if (t >= on) {
            continue;
        }
        double env = 1.0;
        if (t < fade) {
            env = (double)t / fade;
        } else if (on - t < fade) {
            env = (double)(on - t) / fade;
        }
        double x = (double)t / rate;
        double v = RING_AMP * (sin(2.0 * PI * RING_HZ1 * x) + sin(2.0 * PI * RING_HZ2 * x));
        int32_t s = pcm[i] + (int32_t)(env * v * 32767.0);
        pcm[i] = (int16_t)(s > INT16_MAX ? INT16_MAX : s < INT16_MIN ? INT16_MIN : s);
    }
    a->ring_pos = (a->ring_pos + (uint32_t)m->frame) % period;
}

bool mc_ann_render(mc_t *m, bool render)
{
    bool ann = next_frame(m, m->ann_pcm, render);
    if (!render) {
        return ann || m->ann.ring;
    }
    if (!ann) {
        memset(m->ann_pcm, 0, m->frame * sizeof m->ann_pcm[0]);
    }
    if (m->ann.ring) {
        ring_into(m, m->ann_pcm);
    }
    return ann || m->ann.ring;
}

int32_t mc_ann_duck_step(mc_t *m, bool ducked)
{
    mc_ann_t *a = &m->ann;
    int32_t span = ONE_Q24 - DUCK_Q24;
    if (ducked && a->duck_q24 > DUCK_Q24) {
        int32_t step = span / (int32_t)(m->cfg.rate / 1000u * MC_DUCK_DOWN_MS);
        a->duck_q24 = a->duck_q24 - step < DUCK_Q24 ? DUCK_Q24 : a->duck_q24 - step;
    } else if (!ducked && a->duck_q24 < ONE_Q24) {
        int32_t step = span / (int32_t)(m->cfg.rate / 1000u * MC_DUCK_UP_MS);
        a->duck_q24 = a->duck_q24 + step > ONE_Q24 ? ONE_Q24 : a->duck_q24 + step;
    }
    return a->duck_q24;
}
