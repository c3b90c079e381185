/*
 * media_jitter.c - the per-peer jitter buffer and the frame clock.
 *
 * Slots are indexed by RTP sequence number modulo MC_JITTER_SLOTS; one slot is one 20 ms
 * packet. Playout starts once MC_PREFILL_FRAMES are buffered and then takes exactly one
 * frame per pop, so a peer's clock drift shows as a buffer that grows (frames are dropped
 * to stay under 3/4 full) or runs dry (frames are concealed, and after MC_IDLE_FRAMES of
 * nothing the buffer prefills again).
 */
#include <string.h>

#include "media_core.h"

void mc_jitter_reset(mc_jitter_t *jb)
{
    memset(jb, 0, sizeof *jb);
}

static void flush(mc_jitter_t *jb)
{
    for (size_t i = 0; i < MC_JITTER_SLOTS; i++) {
        jb->slot[i].used = false;
    }
    jb->buffered = 0;
    jb->playing = false;
    jb->misses = 0;
}

bool mc_jitter_push(mc_jitter_t *jb, uint16_t seq, const uint8_t *payload, size_t len)
{
    if (len == 0 || len > MC_MAX_PAYLOAD) {
        return false;
    }
    if (!jb->have_next) {
        jb->have_next = true;
        jb->next_seq = seq;
    }
    int16_t ahead = (int16_t)(uint16_t)(seq - jb->next_seq);
    if (ahead < 0) {
        if (jb->playing || ahead <= -(int)(MC_JITTER_SLOTS / 2)) {
            jb->late++; /* its playout time has passed */
            return false;
        }
        /* Reordered before playout began: start from the earlier one. */
        jb->next_seq = seq;
        ahead = 0;
    }
    if (ahead >= (int)MC_JITTER_SLOTS) {
        jb->resets++; /* the sender jumped (restart, long gap): start over from here */
        flush(jb);
        jb->next_seq = seq;
    }
    mc_slot_t *s = &jb->slot[seq % MC_JITTER_SLOTS];
    if (s->used && s->seq == seq) {
        jb->duplicates++;
        return false;
    }
    if (!s->used) {
        jb->buffered++;
    }
    s->used = true;
    s->seq = seq;
    s->len = (uint16_t)len;
    memcpy(s->data, payload, len);
    return true;
}

mc_pop_t mc_jitter_pop(mc_jitter_t *jb, const uint8_t **data, size_t *len)
{
    if (!jb->playing) {
        if (jb->buffered < MC_PREFILL_FRAMES) {
            return MC_POP_WAIT;
        }
        jb->playing = true;
        jb->misses = 0;
    }
    while (jb->buffered > MC_JITTER_SLOTS * 3 / 4) {
        /* Too much delay built up (the sender's clock runs fast): drop the oldest frame. */
        mc_slot_t *old = &jb->slot[jb->next_seq % MC_JITTER_SLOTS];
        if (old->used && old->seq == jb->next_seq) {
            old->used = false;
            jb->buffered--;
            jb->dropped++;
        }
        jb->next_seq++;
    }
    if (jb->buffered == 0) {
        if (++jb->misses >= MC_IDLE_FRAMES) {
            flush(jb); /* the peer paused: the next packet anchors playout anew */
            jb->have_next = false;
            return MC_POP_WAIT;
        }
        jb->next_seq++;
        return MC_POP_LOST;
    }
    jb->misses = 0;
    mc_slot_t *s = &jb->slot[jb->next_seq % MC_JITTER_SLOTS];
    uint16_t due = jb->next_seq++;
    if (!s->used || s->seq != due) {
        return MC_POP_LOST;
    }
    s->used = false;
    jb->buffered--;
    *data = s->data;
    *len = s->len;
    return MC_POP_FRAME;
}

/* ---- frame clock --------------------------------------------------------------------------- */

void mc_clock_start(mc_clock_t *clk, uint64_t now_us)
{
    clk->period_us = MC_FRAME_MS * 1000u;
    clk->next_us = now_us + clk->period_us;
    clk->resyncs = 0;
}

unsigned mc_clock_due(mc_clock_t *clk, uint64_t now_us)
{
    if (now_us < clk->next_us) {
        return 0;
    }
    uint64_t due = (now_us - clk->next_us) / clk->period_us + 1;
    if (due > MC_CLOCK_MAX_BEHIND) {
        /* The task was stalled for long: play on from now rather than rush the backlog. */
        clk->resyncs++;
        clk->next_us = now_us + clk->period_us;
        return 1;
    }
    clk->next_us += due * clk->period_us;
    return (unsigned)due;
}

uint32_t mc_clock_wait_us(const mc_clock_t *clk, uint64_t now_us)
{
    return now_us >= clk->next_us ? 0 : (uint32_t)(clk->next_us - now_us);
}
