/*
 * fuzz_media.c - libFuzzer target over what the media core parses: RTP from peers and
 * SDP from the meeting server.
 *
 * The first byte picks the path:
 *   0 SDP: mc_sdp_audio on the rest; a codec it returns must be allowed, with pt <= 127;
 *   1 a session: a core at 16 kHz with a PCMU, a PCMA and an Opus peer (real libopus);
 *     the rest is split at 0xFF 0xFE into packets, each packet's first byte picks the
 *     peer and how far the clock moves, and a frame runs after each; every speaker frame
 *     is within int16 and stats stay consistent; "peer" 3 is the announcement player: the
 *     packet is a frame for it (PCMU or Opus), and the ring or a flush may come with it,
 *     and its queue and the ducking stay within their bounds;
 *   2 the jitter buffer alone: pairs of (seq high, seq low) push/pop, checking its
 *     bookkeeping (buffered never exceeds the slots).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host_opus.h"
#include "media_core.h"

static void fail(const char *what) __attribute__((noreturn));
static void fail(const char *what)
{
    fprintf(stderr, "fuzz_media: %s\n", what);
    abort();
}

static unsigned sent;
static void count(void *ctx, uint32_t peer, const uint8_t *rtp, size_t len)
{
    (void)ctx;
    (void)peer;
    mc_rtp_t h;
    if (!mc_rtp_parse(rtp, len, &h)) {
        fail("the core sent a packet it cannot parse itself");
    }
    sent++;
}

static void fuzz_sdp(const uint8_t *data, size_t size)
{
    unsigned allowed = size > 0 ? data[0] & 0x0e : 0;
    mc_codec_t c = MC_CODEC_NONE;
    uint8_t pt = 0;
    if (mc_sdp_audio((const char *)data, size, allowed, &c, &pt)) {
        if ((allowed & MC_ALLOW(c)) == 0 || pt > 127) {
            fail("sdp: a codec that was not allowed");
        }
    }
}

static void fuzz_session(const uint8_t *data, size_t size)
{
    static mc_t m;
    mc_config_t cfg = {.rate = 16000, .opus = host_opus_ops(), .send = count};
    if (!mc_init(&m, &cfg) || !mc_peer_add(&m, 0, MC_CODEC_PCMU, 0, true, true) ||
        !mc_peer_add(&m, 1, MC_CODEC_PCMA, 8, false, true) ||
        !mc_peer_add(&m, 2, MC_CODEC_OPUS, 111, true, true)) {
        fail("setup");
    }
    int16_t spk[MC_MAX_FRAME];
    uint64_t now = 0;
    size_t i = 0;
    while (i < size) {
        size_t j = i;
        while (j + 1 < size && !(data[j] == 0xff && data[j + 1] == 0xfe)) {
            j++;
        }
        if (j + 1 >= size) {
            j = size;
        }
        if (j > i) {
            uint8_t ctl = data[i];
            now += ctl >> 2; /* 0..63 ms */
            if ((ctl & 3u) == 3u) {
                mc_codec_t codec = (ctl & 0x40) != 0 ? MC_CODEC_PCMU : MC_CODEC_OPUS;
                (void)mc_ann_push(&m, codec, data + i + 1, j - i - 1);
                if (ctl & 0x20) {
                    mc_ring(&m, (ctl & 0x10) != 0);
                }
                if ((ctl & 0x0c) == 0x0c) {
                    mc_ann_flush(&m);
                }
            } else {
                (void)mc_peer_rtp(&m, ctl & 3u, data + i + 1, j - i - 1, now);
            }
            if (ctl & 0x80) {
                mc_set_mic(&m, (ctl & 0x40) != 0);
                mc_set_volume(&m, (int)(ctl & 0x7f));
            }
        }
        mc_frame(&m, NULL, spk);
        uint32_t queued, played;
        mc_ann_progress(&m, &queued, &played);
        if (queued > MC_ANN_FRAMES || m.ann.used > MC_ANN_BYTES || mc_duck_gain(&m) < 0.2499 ||
            mc_duck_gain(&m) > 1.0) {
            fail("announcement player out of bounds");
        }
        i = j + 2;
    }
    for (uint32_t id = 0; id < 3; id++) {
        const mc_peer_stats_t *st = mc_peer_stats(&m, id);
        if (st == NULL || st->level < 0.0 || st->level > 1.0 || st->jitter_ms < 0.0) {
            fail("stats out of range");
        }
    }
    mc_deinit(&m);
}

static void fuzz_jitter(const uint8_t *data, size_t size)
{
    static mc_jitter_t jb;
    mc_jitter_reset(&jb);
    for (size_t i = 0; i + 1 < size; i += 2) {
        uint16_t seq = (uint16_t)((data[i] << 8) | data[i + 1]);
        if (data[i] & 0x01) {
            const uint8_t *d;
            size_t n;
            if (mc_jitter_pop(&jb, &d, &n) == MC_POP_FRAME && (n == 0 || n > MC_MAX_PAYLOAD)) {
                fail("jitter: a frame of impossible size");
            }
        } else {
            size_t want = 1u + (data[i + 1] & 0x0fu), left = size - i;
            (void)mc_jitter_push(&jb, seq, data + i, want < left ? want : left);
        }
        size_t used = 0;
        for (size_t k = 0; k < MC_JITTER_SLOTS; k++) {
            used += jb.slot[k].used ? 1u : 0u;
        }
        if (used != jb.buffered || jb.buffered > MC_JITTER_SLOTS) {
            fail("jitter: buffered count is off");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    switch (data[0] % 3) {
        case 0:
            fuzz_sdp(data + 1, size - 1);
            break;
        case 1:
            fuzz_session(data + 1, size - 1);
            break;
        default:
            fuzz_jitter(data + 1, size - 1);
            break;
    }
    return 0;
}
