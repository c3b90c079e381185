/*
 * media_frame_bench.c - the media core's work per 20 ms frame, for bench/firmware_size.sh:
 * a device at RATE Hz in a room with N peers, each sending one packet per frame. One frame
 * = every peer's packet in (RTP parse, jitter buffer, decode), the speaker mix (volume,
 * clipping), the mic through the gate, one encode, one RTP packet out per peer.
 *
 *   media_frame_bench PEERS opus|pcmu [FRAMES]
 *
 * Run it under valgrind --tool=callgrind --toggle-collect=run_frames: only the frames count,
 * not making the packets. Prints the frame count so the script can divide.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host_opus.h"
#include "media_core.h"

#define RATE       16000u
#define FRAME      (RATE / 50u)
#define MAX_FRAMES 500

static uint8_t packets[MC_MAX_PEERS][MAX_FRAMES][MC_MAX_RTP];
static size_t lens[MC_MAX_PEERS][MAX_FRAMES];
static unsigned sent;

static void keep(void *ctx, uint32_t peer, const uint8_t *rtp, size_t len)
{
    (void)ctx;
    (void)peer;
    (void)rtp;
    sent += len > 0;
}

static size_t filling;
static uint32_t filling_peer;
static unsigned filling_frame;
static void capture(void *ctx, uint32_t peer, const uint8_t *rtp, size_t len)
{
    (void)ctx;
    (void)peer;
    memcpy(packets[filling_peer][filling_frame], rtp, len);
    filling = len;
}

static int16_t mic[MAX_FRAMES][FRAME];

void run_frames(mc_t *m, unsigned peers, unsigned frames);
void run_frames(mc_t *m, unsigned peers, unsigned frames)
{
    static int16_t spk[FRAME];
    for (unsigned f = 0; f < frames; f++) {
        for (unsigned p = 0; p < peers; p++) {
            (void)mc_peer_rtp(m, p + 1, packets[p][f], lens[p][f], (uint64_t)f * 20u);
        }
        mc_frame(m, mic[f], spk);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: media_frame_bench PEERS opus|pcmu [FRAMES]\n");
        return 2;
    }
    unsigned peers = (unsigned)atoi(argv[1]);
    mc_codec_t codec = strcmp(argv[2], "opus") == 0 ? MC_CODEC_OPUS : MC_CODEC_PCMU;
    uint8_t pt = codec == MC_CODEC_OPUS ? 111 : 0;
    unsigned frames = argc > 3 ? (unsigned)atoi(argv[3]) : 250;
    if (peers < 1 || peers > MC_MAX_PEERS || frames < 1 || frames > MAX_FRAMES) {
        fprintf(stderr, "1 <= PEERS <= %d, 1 <= FRAMES <= %d\n", MC_MAX_PEERS, MAX_FRAMES);
        return 2;
    }
    /* Each peer's packets, made by a core of its own playing its own tone. */
    for (unsigned p = 0; p < peers; p++) {
        mc_t src;
        mc_config_t sc = {.rate = RATE, .opus = host_opus_ops(), .send = capture,
                          .ssrc_seed = 100 + p};
        if (!mc_init(&src, &sc) || !mc_peer_add(&src, 1, codec, pt, true, false)) {
            return 1;
        }
        int16_t pcm[FRAME];
        filling_peer = p;
        for (unsigned f = 0; f < frames; f++) {
            for (unsigned i = 0; i < FRAME; i++) {
                pcm[i] = (int16_t)(6000.0 *
                                   sin(2.0 * 3.14159265 * (400.0 + 175.0 * p) * (f * FRAME + i) / RATE));
            }
            filling_frame = f;
            mc_frame(&src, pcm, NULL);
            lens[p][f] = filling;
        }
        mc_deinit(&src);
    }
    for (unsigned f = 0; f < frames; f++) {
        for (unsigned i = 0; i < FRAME; i++) {
            mic[f][i] = (int16_t)(8000.0 * sin(2.0 * 3.14159265 * 700.0 * (f * FRAME + i) / RATE));
        }
    }
    mc_t m;
    mc_config_t cfg = {.rate = RATE, .opus = host_opus_ops(), .send = keep};
    if (!mc_init(&m, &cfg)) {
        return 1;
    }
    for (unsigned p = 0; p < peers; p++) {
        if (!mc_peer_add(&m, p + 1, codec, pt, true, true)) {
            return 1;
        }
    }
    mc_set_volume(&m, 80);
    run_frames(&m, peers, frames);
    unsigned lost = 0;
    for (unsigned p = 0; p < peers; p++) {
        lost += mc_peer_stats(&m, p + 1)->packets_lost;
    }
    printf("frames %u peers %u codec %s sent %u lost %u\n", frames, peers, mc_codec_name(codec),
           sent, lost);
    mc_deinit(&m);
    return 0;
}
